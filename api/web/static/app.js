// The web page: watches and drives the server through its own API. Plain modern JS (ES
// modules, fetch streams), no build step. Everything it knows of the domains (their kinds,
// forms and models) comes from the server: /openapi.json, /api/models and the jobs.

const KEY_STORAGE = "deferred-diffusion.api-key";
const JOB_LIMIT = 100;
const FILES = "/api/files/";
const IMAGE_SUFFIXES = [".png", ".jpg", ".jpeg", ".webp", ".gif"];
const VIDEO_SUFFIXES = [".mp4", ".webm", ".mov"];
const ACTIVE = ["queued", "running"];

const state = {
  spec: null, // /openapi.json
  kinds: [], // [{kind, path, schema}] : the submit routes, from the spec
  models: [], // /api/models
  jobs: new Map(), // id → job, as the live list shows them
  selected: null, // the id of the job in the detail panel
  filters: { status: "", kind: "" },
  stream: null, // the job list's AbortController
  form: null, // the submit form's root field
};

// ---------------------------------------------------------------- small DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (selector) => document.querySelector(selector);

function humanize(name) {
  const words = String(name).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function showMessage(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.classList.toggle("error", isError);
  box.hidden = !text;
}

function formatTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const today = when.toDateString() === new Date().toDateString();
  return today ? when.toLocaleTimeString() : when.toLocaleString();
}

function took(job) {
  if (!job.started_at) return "";
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  const seconds = (end - new Date(job.started_at)) / 1000;
  return seconds < 60 ? `${seconds.toFixed(1)} s` : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// ---------------------------------------------------------------- the API, with its key

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type;
    this.field = error.field;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

let keyPrompt = null; // one prompt at a time, whoever asked

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("#key-dialog");
  $("#key-error").textContent = reason || "";
  $("#key-input").value = "";
  keyPrompt = new Promise((resolve) => {
    const form = $("#key-form");
    const done = (event) => {
      event.preventDefault();
      const key = $("#key-input").value.trim();
      if (!key) return;
      localStorage.setItem(KEY_STORAGE, key);
      form.removeEventListener("submit", done);
      dialog.close();
      keyPrompt = null;
      $("#forget-key").hidden = false;
      resolve();
    };
    form.addEventListener("submit", done);
    dialog.addEventListener("cancel", (event) => event.preventDefault()); // no way around it
    dialog.showModal();
    $("#key-input").focus();
  });
  return keyPrompt;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.error || { message: JSON.stringify(body) });
  } catch {
    return new ApiError(response.status, { message: `HTTP ${response.status} ${response.statusText}` });
  }
}

// fetch with the key; a 401 asks for a (new) key and tries again.
async function call(path, options = {}) {
  for (;;) {
    const response = await fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), ...authHeaders() },
    });
    if (response.status === 401) {
      const error = await errorOf(response);
      if (error.field === "Authorization" || !error.field) {
        await askForKey(apiKey() ? "That key was refused: " + error.message : "");
        continue;
      }
      throw error;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

async function getJson(path) {
  return (await call(path)).json();
}

// Server-Sent Events read through fetch (EventSource can't send the key): calls
// onEvent(name, data) for each event until the stream ends or `signal` aborts.
async function readEvents(path, onEvent, signal) {
  const response = await call(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(":")) continue; // a comment: keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// ---------------------------------------------------------------- the spec: kinds, schemas

function resolve(schema) {
  let seen = 0;
  while (schema && schema.$ref && seen++ < 32) {
    const path = schema.$ref.replace(/^#\//, "").split("/");
    schema = path.reduce((node, part) => node[part], state.spec);
  }
  return schema || {};
}

// The submit routes: POST operations whose answer is a job of a fixed kind, one per kind
// (the shortest path: /api/images, not /api/images/rerun, which answers an images job too).
function submitRoutes(spec) {
  const routes = new Map();
  for (const [path, operations] of Object.entries(spec.paths)) {
    const post = operations.post;
    if (!post || !post.requestBody) continue;
    const answer = post.responses?.["202"]?.content?.["application/json"]?.schema;
    const kind = answer && resolve(answer).properties?.kind?.const;
    const body = post.requestBody.content?.["application/json"]?.schema;
    if (!kind || !body || (routes.has(kind) && routes.get(kind).path.length <= path.length)) continue;
    routes.set(kind, { kind, path, schema: body, about: post.summary, description: post.description });
  }
  return [...routes.values()];
}

function queryEnum(spec, path, name) {
  const parameter = (spec.paths[path]?.get?.parameters || []).find((p) => p.name === name);
  if (!parameter) return [];
  const schema = resolve(parameter.schema);
  const options = schema.enum || (schema.anyOf || []).flatMap((s) => resolve(s).enum || []);
  return options;
}

// ---------------------------------------------------------------- jobs: the live list

function matchesFilters(job) {
  return (!state.filters.status || job.status === state.filters.status)
    && (!state.filters.kind || job.kind === state.filters.kind);
}

function promptOf(request) {
  if (typeof request.prompt === "string" && request.prompt) return request.prompt;
  for (const message of [...(request.messages || [])].reverse()) {
    if (typeof message.content === "string") return message.content;
    const text = (message.content || []).find((part) => part.type === "text");
    if (text) return text.text;
  }
  const first = Object.entries(request).find(([name, value]) => /prompt/.test(name) && typeof value === "string" && value);
  return first ? first[1] : "";
}

function progressBar(job) {
  const progress = job.progress;
  const bar = h("progress", { class: "bar", max: progress?.total || 1, value: progress ? progress.step : (job.status === "succeeded" ? 1 : 0) });
  if (!progress && job.status === "running") bar.removeAttribute("value"); // started, no step yet
  const text = progress ? `${progress.step}/${progress.total}` : "";
  return h("span", { class: "progress" }, bar, h("span", { class: "progress-text" }, text), progress?.status ? h("span", { class: "muted" }, ` ${progress.status}`) : null);
}

function cancelButton(job) {
  if (!ACTIVE.includes(job.status)) return null;
  return h("button", {
    type: "button",
    class: "cancel",
    onclick: async (event) => {
      event.stopPropagation();
      event.target.disabled = true;
      try {
        upsertJob(await (await call(`/api/jobs/${job.id}`, { method: "DELETE" })).json());
      } catch (error) {
        showMessage(`Cancel failed: ${error.message}`, true);
      }
    },
  }, "Cancel");
}

function jobRow(job) {
  const prompt = promptOf(job.request || {});
  return h("tr", {
    "data-id": job.id,
    "data-status": job.status,
    class: job.id === state.selected ? "selected" : "",
    tabindex: "0", // opened by keyboard too
    onclick: () => { location.hash = `#jobs/${job.id}`; },
    onkeydown: (event) => { if (event.key === "Enter" && event.target === event.currentTarget) location.hash = `#jobs/${job.id}`; },
  },
  h("td", {}, job.kind),
  h("td", {}, job.model),
  h("td", { class: "prompt", title: prompt }, prompt),
  h("td", {}, h("span", { class: `status status-${job.status}` }, job.status)),
  h("td", {}, progressBar(job)),
  h("td", { class: "queue-position" }, job.queue_position ?? ""),
  h("td", { class: "secondary", title: job.created_at }, formatTime(job.created_at)),
  h("td", { class: "secondary took" }, took(job)),
  h("td", { class: "secondary" }, job.worker || ""),
  h("td", {}, cancelButton(job)));
}

function sortedJobs() {
  return [...state.jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, JOB_LIMIT);
}

let renderQueued = false;

function renderJobs() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const body = $("#jobs tbody");
    const existing = new Map([...body.children].map((row) => [row.dataset.id, row]));
    const rows = sortedJobs().map((job) => {
      const row = existing.get(job.id);
      if (row && row.dataset.version === version(job)) return row;
      const fresh = jobRow(job);
      fresh.dataset.version = version(job);
      return fresh;
    });
    body.replaceChildren(...rows);
    $("#no-jobs").hidden = rows.length > 0;
    $("#job-count").textContent = `${rows.length} job${rows.length === 1 ? "" : "s"}`;
  });
}

// What a row shows, so that a row is rebuilt only when that changed.
function version(job) {
  return JSON.stringify([job.status, job.queue_position, job.progress, job.worker, job.finished_at, job.id === state.selected]);
}

function upsertJob(job) {
  if (matchesFilters(job)) state.jobs.set(job.id, job);
  else state.jobs.delete(job.id);
  renderJobs();
  if (job.id === state.selected) renderDetail(job);
}

async function followJobs() {
  state.stream?.abort();
  const controller = new AbortController();
  state.stream = controller;
  const query = new URLSearchParams({ limit: JOB_LIMIT });
  if (state.filters.status) query.set("status", state.filters.status);
  if (state.filters.kind) query.set("kind", state.filters.kind);
  let delay = 1000;
  while (!controller.signal.aborted) {
    try {
      await readEvents(`/api/jobs/events?${query}`, (name, data) => {
        delay = 1000;
        setConnection("live");
        if (name === "jobs") {
          state.jobs = new Map(data.map((job) => [job.id, job]));
          renderJobs();
          if (state.selected && state.jobs.has(state.selected)) renderDetail(state.jobs.get(state.selected));
        } else if (name === "job") {
          upsertJob(data);
          healthChanged();
        } else if (name === "progress") {
          const job = state.jobs.get(data.id);
          if (job) {
            job.progress = data.progress;
            renderJobs();
            if (job.id === state.selected) updateDetailProgress(job);
          }
        } else if (name === "queue") {
          for (const job of state.jobs.values()) {
            const position = data[job.id] ?? null;
            if (job.queue_position !== position) job.queue_position = position;
          }
          renderJobs();
        }
      }, controller.signal);
    } catch (error) {
      if (controller.signal.aborted) return;
      setConnection(`reconnecting: ${error.message}`, true);
    }
    if (controller.signal.aborted) return;
    setConnection("reconnecting…", true);
    await new Promise((done) => setTimeout(done, delay)); // the stream broke: back off, then again
    delay = Math.min(delay * 2, 15000);
  }
}

function setConnection(text, bad = false) {
  const el = $("#connection");
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

// ---------------------------------------------------------------- jobs: the detail panel

async function showJob(id) {
  state.selected = id;
  renderJobs();
  const panel = $("#detail");
  panel.hidden = false;
  $("#jobs-layout").classList.add("with-detail");
  let job = state.jobs.get(id);
  if (!job) {
    try {
      job = await getJson(`/api/jobs/${id}`);
    } catch (error) {
      panel.replaceChildren(h("p", { class: "error-text" }, error.message));
      return;
    }
  }
  renderDetail(job, true);
}

function detailVersion(job) {
  return JSON.stringify([job.id, job.status, job.error, job.result, job.worker, job.queue_position]);
}

function renderDetail(job, force = false) {
  const panel = $("#detail");
  if (!force && panel.dataset.version === detailVersion(job)) return updateDetailProgress(job);
  panel.dataset.version = detailVersion(job);
  panel.replaceChildren(...[
    h("div", { class: "detail-head" },
      h("h2", {}, `${job.kind} · ${job.model}`),
      h("button", { type: "button", class: "close", title: "Close", onclick: () => { location.hash = "#jobs"; } }, "×")),
    h("p", {}, h("span", { class: `status status-${job.status}` }, job.status),
      job.queue_position ? ` · position ${job.queue_position} in the queue` : "",
      job.worker ? ` · on ${job.worker}` : ""),
    h("div", { class: "detail-progress" }),
    h("dl", { class: "times" },
      h("dt", {}, "Id"), h("dd", {}, h("code", {}, job.id)),
      h("dt", {}, "Created"), h("dd", {}, formatTime(job.created_at)),
      job.started_at ? [h("dt", {}, "Started"), h("dd", {}, formatTime(job.started_at))] : null,
      job.finished_at ? [h("dt", {}, "Finished"), h("dd", {}, formatTime(job.finished_at)), h("dt", {}, "Took"), h("dd", {}, took(job))] : null),
    h("div", { class: "actions" },
      cancelButton(job),
      h("button", { type: "button", class: "again", onclick: () => submitAgain(job) }, "Submit again")),
    job.error ? h("div", { class: "job-error", role: "alert" }, h("strong", {}, job.error.type), ": ", job.error.message) : null,
    job.result ? h("section", {}, h("h3", {}, "Outputs"), outputs(job.result)) : null,
    job.result ? h("section", {}, h("h3", {}, "Result"), readable(job.result)) : null,
    h("section", {}, h("h3", {}, "Request"), h("pre", { class: "json request-json" }, JSON.stringify(job.request, null, 2))),
  ].filter(Boolean));
  updateDetailProgress(job);
}

function updateDetailProgress(job) {
  const box = $("#detail .detail-progress");
  if (!box) return;
  const answer = job.progress?.text; // a text job's answer so far
  box.replaceChildren(
    ACTIVE.includes(job.status) || job.progress ? progressBar(job) : "",
    answer && !job.result ? h("div", { class: "text-answer" }, answer) : "",
  );
}

// Every download link in a result, shown by its type: pictures, videos, or a link.
function outputs(result) {
  const found = [];
  const walk = (value, owner) => {
    if (typeof value === "string" && value.startsWith(FILES)) found.push({ url: value, owner });
    else if (Array.isArray(value)) value.forEach((item) => walk(item, owner));
    else if (value && typeof value === "object") Object.values(value).forEach((item) => walk(item, value));
  };
  walk(result, result);
  if (!found.length) return h("p", { class: "muted" }, "No files.");
  return h("div", { class: "outputs" }, found.map(({ url, owner }) => {
    const name = decodeURIComponent(url.split("?")[0].split("/").pop());
    const suffix = name.slice(name.lastIndexOf(".")).toLowerCase();
    const caption = [owner.label, owner.score != null ? Number(owner.score).toFixed(2) : null,
      owner.width && owner.height ? `${owner.width}×${owner.height}` : null,
      owner.frames ? `${owner.frames} frames @ ${owner.fps} fps` : null].filter(Boolean).join(" · ");
    let media;
    if (IMAGE_SUFFIXES.includes(suffix)) {
      media = h("a", { href: url, target: "_blank", rel: "noopener", title: "Open full size" },
        h("img", { class: "thumb", src: url, alt: owner.path || name, loading: "lazy" }));
    } else if (VIDEO_SUFFIXES.includes(suffix)) {
      media = h("video", { class: "thumb", src: url, controls: true, preload: "metadata", loop: true });
    } else {
      media = h("a", { href: url, download: name, class: "file-link" }, `Download ${name}`);
    }
    return h("figure", {}, media, h("figcaption", {}, caption, owner.path ? h("div", { class: "path", title: owner.path }, owner.path) : null));
  }));
}

// A JSON value for people: objects as lists of fields, long strings as text.
function readable(value, depth = 0) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "—");
  if (typeof value === "string") {
    if (value.startsWith(FILES)) return h("a", { href: value, target: "_blank", rel: "noopener" }, "open");
    return value.length > 80 || value.includes("\n") ? h("div", { class: "text" }, value) : h("span", {}, value);
  }
  if (typeof value !== "object") return h("span", {}, String(value));
  if (Array.isArray(value)) {
    if (!value.length) return h("span", { class: "muted" }, "none");
    if (value.every((item) => item === null || typeof item !== "object")) return h("span", {}, value.join(", "));
    return h("ol", { class: "items" }, value.map((item) => h("li", {}, readable(item, depth + 1))));
  }
  // The links show as outputs above; absent values (null) are left out.
  const entries = Object.entries(value).filter(([name, item]) => name !== "url" && item !== null);
  return h("dl", { class: depth ? "fields nested" : "fields" }, entries.map(([name, item]) => [
    h("dt", {}, humanize(name)), h("dd", {}, readable(item, depth + 1)),
  ]));
}

function submitAgain(job) {
  location.hash = `#submit/${job.kind}`;
  showSubmit(job.kind, job.request);
}

// ---------------------------------------------------------------- submit: forms from the spec

// A field of a form made from a JSON schema: {el, get() → value or undefined, set(value)}.
function field(name, schema, { required = false, path = name, context = {} } = {}) {
  schema = resolve(schema);
  const variants = (schema.anyOf || schema.oneOf || []).map(resolve);
  const nullable = variants.some((v) => v.type === "null");
  const kept = variants.filter((v) => v.type !== "null");
  if (kept.length === 1) {
    const inner = { ...kept[0], description: schema.description || kept[0].description, title: schema.title || kept[0].title, default: schema.default };
    return field(name, inner, { required: required && !nullable, path, context: { ...context, nullable } });
  }
  const label = schema.title || humanize(name);
  const about = schema.description ? h("small", { class: "about" }, schema.description) : null;
  const optional = context.nullable || schema.default !== undefined || !required;
  if (kept.length > 1) return variantField(name, schema, kept, { required, path, context, label, about });
  if (schema.const !== undefined) return { el: h("span"), get: () => schema.const, set() {} };
  if (schema.enum) {
    const select = h("select", { name: path, "data-path": path },
      optional && schema.default === undefined ? h("option", { value: "" }, "—") : null,
      schema.enum.map((option) => h("option", { value: option }, option)));
    if (schema.default !== undefined) select.value = schema.default;
    else if (!optional && schema.enum.includes("user")) select.value = "user"; // a message's role
    return labelled(label, about, select, {
      // an option's value is text: give back the schema's own value (8, not "8")
      get: () => (select.value === "" ? undefined : schema.enum.find((option) => String(option) === select.value)),
      set: (value) => { select.value = value ?? ""; },
    });
  }
  if (schema.type === "boolean") {
    const box = h("input", { type: "checkbox", name: path, "data-path": path, checked: schema.default === true });
    return labelled(label, about, box, { get: () => box.checked, set: (value) => { box.checked = Boolean(value); } }, "check");
  }
  if (schema.type === "integer" || schema.type === "number") {
    const max = schema.maximum ?? schema.exclusiveMaximum;
    const input = h("input", {
      type: "number", name: path, "data-path": path,
      min: schema.minimum ?? schema.exclusiveMinimum, max: max !== undefined && max < 1e15 ? max : undefined,
      step: schema.type === "integer" ? 1 : "any",
      placeholder: context.modelDefault !== undefined ? `model default: ${context.modelDefault}` : (optional ? "default" : ""),
    });
    if (schema.default !== undefined && schema.default !== null) input.value = schema.default;
    return labelled(label, about, input, {
      get: () => (input.value === "" ? undefined : Number(input.value)),
      set: (value) => { input.value = value ?? ""; },
    });
  }
  if (schema.type === "string") return stringField(name, schema, { path, context, label, about });
  if (schema.type === "array" && schema.items) return listField(name, schema, { path, context, label, about });
  if (schema.type === "object" && schema.properties) {
    const fieldset = objectField(schema, path, context);
    return { el: h("fieldset", { class: "object" }, h("legend", {}, label), about, fieldset.el), get: fieldset.get, set: fieldset.set };
  }
  return jsonField(schema, { path, label, about }); // anything else: as JSON
}

function labelled(label, about, input, access, kind = "") {
  const el = h("label", { class: `field ${kind}` }, h("span", { class: "label" }, label), input, about);
  return { el, ...access };
}

function stringField(name, schema, { path, context, label, about }) {
  const long = /prompt|text|content/.test(name) || (schema.maxLength ?? 0) === 100000;
  const input = long
    ? h("textarea", { name: path, "data-path": path, rows: 3 })
    : h("input", { type: "text", name: path, "data-path": path });
  if (schema.default) input.value = schema.default;
  const optional = context.nullable;
  const parts = [input];
  // An input that takes an upload's path (or a data: URL, hence its length).
  if ((schema.description || "").includes("POST /api/files") || (schema.maxLength ?? 0) >= 2 ** 20) {
    const picker = h("input", { type: "file", accept: "image/*,.exr", class: "upload", "data-path": `${path}.upload` });
    picker.addEventListener("change", async () => {
      const file = picker.files[0];
      if (!file) return;
      const body = new FormData();
      body.append("file", file);
      picker.disabled = true;
      try {
        input.value = (await (await call("/api/files", { method: "POST", body })).json()).path;
      } catch (error) {
        showMessage(`Upload of ${file.name} failed: ${error.message}`, true);
      } finally {
        picker.disabled = false;
      }
    });
    parts.push(h("span", { class: "upload-box" }, "or upload ", picker));
  }
  return labelled(label, about, h("span", { class: "inputs" }, parts), {
    get: () => (input.value === "" && (optional || schema.default !== undefined) ? undefined : input.value),
    set: (value) => { input.value = value ?? ""; },
  });
}

function jsonField(schema, { path, label, about }) {
  const area = h("textarea", { name: path, "data-path": path, rows: 3, class: "json", spellcheck: false });
  if (schema.default !== undefined) area.value = JSON.stringify(schema.default);
  return labelled(label, about, area, {
    get: () => (area.value.trim() === "" ? undefined : JSON.parse(area.value)),
    set: (value) => { area.value = value === undefined || value === null ? "" : JSON.stringify(value, null, 1); },
  });
}

function objectField(schema, path, context = {}) {
  const required = new Set(schema.required || []);
  const fields = {};
  const el = h("div", { class: "fields-grid" });
  for (const [name, property] of Object.entries(schema.properties || {})) {
    if (context.skip?.includes(name)) continue;
    const modelDefault = context.modelDefaults?.[name];
    fields[name] = field(name, property, { required: required.has(name), path: path ? `${path}.${name}` : name, context: { modelDefault } });
    el.append(fields[name].el);
  }
  return {
    el,
    fields,
    get() {
      const value = {};
      for (const [name, item] of Object.entries(fields)) {
        const got = item.get();
        if (got !== undefined) value[name] = got;
      }
      return value;
    },
    set(value) {
      for (const [name, item] of Object.entries(fields)) if (value && name in value) item.set(value[name]);
    },
  };
}

function listField(name, schema, { path, label, about }) {
  const items = [];
  const list = h("div", { class: "list" });
  const itemTitle = humanize(name).replace(/s$/, "");
  const add = (value) => {
    const index = items.length;
    const item = field(`${index + 1}`, schema.items, { required: true, path: `${path}.${index}` });
    const entry = { item, el: h("div", { class: "list-item" }, item.el, h("button", { type: "button", class: "remove", onclick: () => remove(entry) }, "Remove")) };
    items.push(entry);
    list.append(entry.el);
    if (value !== undefined) item.set(value);
  };
  const remove = (entry) => {
    items.splice(items.indexOf(entry), 1);
    entry.el.remove();
  };
  const clear = () => items.splice(0).forEach((entry) => entry.el.remove());
  for (let i = 0; i < (schema.minItems || 0); i++) add();
  const el = h("fieldset", { class: "object list-field", "data-path": path }, h("legend", {}, label), about, list,
    h("button", { type: "button", class: "add", onclick: () => add() }, `Add ${itemTitle.toLowerCase()}`));
  return {
    el,
    get: () => items.map((entry) => entry.item.get()),
    set(value) {
      clear();
      (Array.isArray(value) ? value : []).forEach((item) => add(item));
    },
  };
}

// anyOf/oneOf of several kinds (text or parts; a text, image or video part): pick one.
function variantField(name, schema, variants, { path, context, label, about }) {
  const discriminator = schema.discriminator?.propertyName;
  const nameOf = (variant, index) => (discriminator && resolve(variant).properties?.[discriminator]?.const)
    || (variant.type === "string" ? "text" : variant.type === "array" ? "list" : variant.title || `option ${index + 1}`);
  const select = h("select", { class: "variant", "data-path": `${path}.variant` }, variants.map((variant, index) => h("option", { value: index }, nameOf(variant, index))));
  const slot = h("div", { class: "variant-slot" });
  let current = null;
  const choose = (index, value) => {
    select.value = String(index);
    current = field(name, { ...variants[index], title: " " }, { required: true, path, context });
    slot.replaceChildren(current.el);
    if (value !== undefined) current.set(value);
  };
  select.addEventListener("change", () => choose(Number(select.value)));
  choose(0);
  const fits = (variant, value) => {
    variant = resolve(variant);
    if (typeof value === "string") return variant.type === "string";
    if (Array.isArray(value)) return variant.type === "array";
    if (value && typeof value === "object") {
      return discriminator ? variant.properties?.[discriminator]?.const === value[discriminator] : variant.type === "object";
    }
    return typeof value === variant.type;
  };
  const el = h("fieldset", { class: "object variant-field" }, h("legend", {}, label, " ", select), about, slot);
  return {
    el,
    get: () => current.get(),
    set(value) {
      if (value === null || value === undefined) return;
      const index = variants.findIndex((variant) => fits(variant, value));
      choose(index < 0 ? 0 : index, value);
    },
  };
}

// The form of a domain: its models from /api/models, then the request of the chosen model.
function domainForm(route, request) {
  const body = resolve(route.schema);
  // Which request each model takes, when the body is one of several (by model).
  const mapping = body["x-request-by-model"] || body.discriminator?.mapping || {};
  const models = state.models.filter((model) => model.domain === route.kind);
  const box = h("div", { class: "domain-form" });
  const modelSelect = h("select", { name: "model", "data-path": "model", id: "model-select" },
    models.map((model) => h("option", { value: model.name, disabled: !model.available, title: model.reason || "" },
      model.name + (model.weights?.tiny ? " (tiny weights)" : "") + (model.available ? "" : " — not available"))));
  const modelAbout = h("small", { class: "about" });
  const fieldsSlot = h("div");
  let fields = null;
  const requestSchema = (name) => {
    if (mapping[name]) return resolve({ $ref: mapping[name] });
    if (body.properties) return body;
    return resolve((body.anyOf || body.oneOf || [])[0]);
  };
  const build = (values) => {
    const model = models.find((m) => m.name === modelSelect.value);
    modelAbout.textContent = model ? [model.family, model.modes?.join(", "), model.reason].filter(Boolean).join(" · ") : "";
    const schema = requestSchema(modelSelect.value);
    fields = objectField(schema, "", { skip: ["model"], modelDefaults: model?.defaults || {} });
    fieldsSlot.replaceChildren(schema.description ? h("p", { class: "muted" }, schema.description) : "", fields.el);
    if (values) fields.set(values);
  };
  modelSelect.addEventListener("change", () => {
    const before = fields.get();
    build(before); // the fields both requests have keep their values
  });
  const first = models.find((model) => model.available) || models[0];
  if (request?.model && models.some((m) => m.name === request.model)) modelSelect.value = request.model;
  else if (first) modelSelect.value = first.name;
  build(request);
  box.append(labelled("Model", modelAbout, modelSelect, {}).el, fieldsSlot);
  return { el: box, get: () => ({ model: modelSelect.value, ...fields.get() }) };
}

function showSubmit(kind, request) {
  const route = state.kinds.find((r) => r.kind === kind) || state.kinds[0];
  if (!route) return;
  for (const tab of $("#submit-kinds").children) tab.classList.toggle("active", tab.dataset.kind === route.kind);
  $("#submit-about").textContent = `POST ${route.path}: ${route.description || route.about || ""}`;
  state.form = { route, form: domainForm(route, request) };
  $("#submit-fields").replaceChildren(state.form.form.el);
  $("#submit-error").textContent = "";
  const json = $("#submit-json");
  json.value = JSON.stringify(request || state.form.form.get(), null, 2);
  $("#submit-json-box").open = false;
}

async function submit(event) {
  event.preventDefault();
  const { route, form } = state.form;
  const error = $("#submit-error");
  error.textContent = "";
  document.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
  let body;
  try {
    body = $("#submit-json-box").open ? JSON.parse($("#submit-json").value) : form.get();
  } catch (problem) {
    error.textContent = `Not JSON: ${problem.message}`;
    return;
  }
  $("#submit-button").disabled = true;
  try {
    const job = await (await call(route.path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
    upsertJob(job);
    location.hash = `#jobs/${job.id}`;
  } catch (problem) {
    error.textContent = problem.field ? `${problem.field}: ${problem.message}` : problem.message;
    const input = problem.field && document.querySelector(`#submit-fields [data-path="${CSS.escape(problem.field)}"]`);
    if (input) {
      input.classList.add("invalid");
      input.focus();
    }
  } finally {
    $("#submit-button").disabled = false;
  }
}

// ---------------------------------------------------------------- health

let healthTimer = null;

function healthChanged() { // a job started or ended: the health view, if shown, follows
  if ($("#view-health").hidden) return;
  clearTimeout(healthTimer);
  healthTimer = setTimeout(showHealth, 300);
}

async function showHealth() {
  const box = $("#health");
  let health, models;
  try {
    [health, models] = await Promise.all([getJson("/health"), getJson("/api/models")]);
  } catch (error) {
    box.replaceChildren(h("p", { class: "error-text" }, error.message));
    return;
  }
  state.models = models;
  showWarning(health.warning);
  const mb = (value) => (value == null ? "" : `${(value / 1024).toFixed(1)} GiB`);
  const loaded = models.filter((model) => model.loaded_on?.length);
  const known = new Set(["status", "version", "devices", "queue", "warming_up", "warning"]);
  const extra = Object.entries(health).filter(([name]) => !known.has(name)); // e.g. workers
  box.replaceChildren(h("div", {},
    h("p", {}, `Version ${health.version} · status ${health.status}`),
    h("h3", {}, "Queue"),
    h("p", { class: "queue-depth" }, `${health.queue.queued} queued · ${health.queue.running} running`),
    h("h3", {}, "Devices"),
    h("table", { class: "devices" },
      h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", {}, "Name"), h("th", {}, "Memory"), h("th", {}, "Allocated"), h("th", {}))),
      h("tbody", {}, health.devices.map((device) => {
        const total = device.memory_total_mb;
        const used = total != null && device.memory_free_mb != null ? total - device.memory_free_mb : null;
        return h("tr", {},
          h("td", {}, device.device),
          h("td", {}, device.name),
          h("td", {}, total != null ? [h("progress", { max: total, value: used }), ` ${mb(used)} of ${mb(total)} used`] : h("span", { class: "muted" }, "—")),
          h("td", {}, mb(device.memory_allocated_mb)),
          h("td", {}, health.warming_up.includes(device.device) ? "warming up" : ""));
      }))),
    extra.map(([name, value]) => [h("h3", {}, humanize(name)), readable(value)]),
    h("h3", {}, "Loaded models"),
    loaded.length
      ? h("ul", {}, loaded.map((model) => h("li", {}, `${model.name} on ${model.loaded_on.join(", ")}`)))
      : h("p", { class: "muted" }, "None loaded yet (a model loads with its first job)."),
    h("h3", {}, "Models"),
    h("table", { class: "models" },
      h("thead", {}, h("tr", {}, ["Name", "Domain", "Family", "Modes", "Weights", "Available"].map((title) => h("th", {}, title)))),
      h("tbody", {}, models.map((model) => h("tr", {},
        h("td", {}, model.name),
        h("td", {}, model.domain),
        h("td", {}, model.family),
        h("td", {}, (model.modes || []).join(", ")),
        h("td", { title: model.weights?.repo }, [model.weights?.source || "none", model.weights?.tiny ? " (tiny)" : ""]),
        h("td", { class: model.available ? "" : "error-text" }, model.available ? "yes" : model.reason || "no"))))),
  ));
}

function showWarning(text) {
  const box = $("#warning");
  box.textContent = text || "";
  box.hidden = !text;
}

// ---------------------------------------------------------------- views and start

function route() {
  const [view, arg] = (location.hash.replace(/^#/, "") || "jobs").split("/");
  const known = ["jobs", "submit", "health"].includes(view) ? view : "jobs";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${known}`;
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("active", link.dataset.view === known);
  if (known === "jobs") {
    if (arg) showJob(arg);
    else {
      state.selected = null;
      $("#detail").hidden = true;
      $("#jobs-layout").classList.remove("with-detail");
      renderJobs();
    }
  } else if (known === "submit") {
    if (!state.form || (arg && state.form.route.kind !== arg)) showSubmit(arg);
  } else showHealth();
}

async function start() {
  $("#forget-key").hidden = !apiKey();
  $("#forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    location.reload();
  });
  try {
    const health = await (await fetch("/health")).json();
    showWarning(health.warning);
    state.spec = await (await fetch("/openapi.json")).json();
    state.models = await getJson("/api/models"); // asks for the key when one is needed
  } catch (error) {
    showMessage(`The server did not answer: ${error.message}`, true);
    return;
  }
  state.kinds = submitRoutes(state.spec);
  for (const status of queryEnum(state.spec, "/api/jobs", "status")) $("#filter-status").append(h("option", { value: status }, status));
  for (const kind of queryEnum(state.spec, "/api/jobs", "kind")) $("#filter-kind").append(h("option", { value: kind }, kind));
  $("#submit-kinds").replaceChildren(...state.kinds.map((r) => h("a", { href: `#submit/${r.kind}`, "data-kind": r.kind, onclick: () => showSubmit(r.kind) }, r.kind)));
  $("#filters").addEventListener("change", () => {
    state.filters = { status: $("#filter-status").value, kind: $("#filter-kind").value };
    followJobs();
  });
  $("#submit-form").addEventListener("submit", submit);
  $("#submit-json-box").addEventListener("toggle", () => {
    if ($("#submit-json-box").open) $("#submit-json").value = JSON.stringify(state.form.form.get(), null, 2);
  });
  $("#health-refresh").addEventListener("click", showHealth);
  window.addEventListener("hashchange", route);
  setInterval(() => { // "Took" of running jobs counts up; no request is made
    if ([...state.jobs.values()].some((job) => job.status === "running")) {
      for (const row of document.querySelectorAll('#jobs tr[data-status="running"]')) {
        const job = state.jobs.get(row.dataset.id);
        if (job) row.querySelector(".took").textContent = took(job);
      }
    }
  }, 1000);
  route();
  followJobs();
}

start();
