"""The Houdini side of the HDAs: what their buttons call (each HDA's PythonModule only
forwards to ``update``, ``update_frame_range``, ``cancel`` and ``build`` here).

Update writes the node's inputs to shared paths under ``$HIP`` (a ROP Image Output per
input), builds the request from the parameters (named as the request fields) and the
nodes upstream, and runs the jobs in a thread: progress goes to the status bar and the
node's Status, Cancel cancels them, and when they are done the node reloads its output.
Errors show the server's message. Without a UI (hython, the farm) the same runs in the
calling thread. ``hou`` is imported only when a function here is called.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deferred_diffusion.client import Client, DeferredDiffusionError, Job, Progress
from deferred_diffusion.nodes import (
    NAMESPACE,
    adapters_of,
    breakdown_nodes,
    conversation,
    frames,
    node_spec,
    request_from_values,
)
from deferred_diffusion.runner import FollowUp, Request, Run

RUNS: dict[str, Run] = {}  # node path -> its run in progress


def _hou() -> Any:
    import hou  # only inside Houdini

    return hou


# --- reading nodes --------------------------------------------------------------------


def node_name(node: Any) -> str:
    """Which of our nodes this is ('image', ...), or '' for any other node."""
    full = node.type().name()
    if not full.startswith(NAMESPACE + "::"):
        return ""
    return full.split("::")[1]


def upstream(node: Any, input_name: str) -> Any | None:
    """The node wired into the input called ``input_name``."""
    index = node_spec(node_name(node))["inputs"].index(input_name)
    inputs = node.inputs()
    return inputs[index] if index < len(inputs) else None


def parameters(node: Any, request: int = 0) -> dict[str, Any]:
    """The request fields the node's parameters fill, at the current frame."""
    return request_from_values(node_name(node), lambda name: node.parm(name).eval(), request)


def work_folder(node: Any) -> Path:
    """Where a node writes its inputs and downloads: $HIP/deferred_diffusion/<node>."""
    return Path(_hou().expandString("$HIP")) / "deferred_diffusion" / node.name()


def write_input(node: Any, input_name: str) -> str | None:
    """Render what is wired into ``input_name`` at the current frame to a PNG under $HIP (a
    path the server reads), or None when nothing is wired."""
    source = upstream(node, input_name)
    if source is None:
        return None
    hou = _hou()
    path = work_folder(node) / "inputs" / f"{input_name}.{int(hou.frame()):04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    rop = node.parent().createNode("rop_image", f"dd_write_{node.name()}_{input_name}")
    try:
        rop.parm("coppath").set(source.path())
        rop.parm("copoutput").set(str(path))
        rop.parm("execute").pressButton()
    finally:
        rop.destroy()
    if not path.is_file():
        raise DeferredDiffusionError(
            f"{node.name()}: could not write its {input_name} input to {path}", "client_error"
        )
    return str(path)


def adapter_nodes(node: Any, kind: str) -> list[Any]:
    """The control_net (or ip_adapter) nodes wired into the image node's extra inputs."""
    found = []
    for name in node_spec(node_name(node))["inputs"]:
        if name.startswith(kind):
            source = upstream(node, name)
            if source is not None and node_name(source) == kind:
                found.append(source)
    return found


def controlnets(node: Any) -> list[dict[str, Any]]:
    entries = []
    for source in adapter_nodes(node, "control_net"):
        image = write_input(source, "src")
        if image is None:
            raise DeferredDiffusionError(
                f"{source.name()}: wire the control image into its src input", "client_error"
            )
        entries.append(parameters(source) | {"image_path": image})
    return entries


def ip_adapters(node: Any) -> list[dict[str, Any]]:
    entries = []
    for source in adapter_nodes(node, "ip_adapter"):
        image = write_input(source, "src")
        if image is None:
            raise DeferredDiffusionError(
                f"{source.name()}: wire the reference image into its src input", "client_error"
            )
        entry = parameters(source) | {"image_path": image}
        mask = write_input(source, "mask")
        if mask is not None:
            entry["mask_path"] = mask
        entries.append(entry)
    return entries


# --- requests -------------------------------------------------------------------------


def image_request(node: Any) -> dict[str, Any]:
    """The image node's request at the current frame: its parameters, src and mask, and the
    control_net and ip_adapter nodes upstream (a model that takes none refuses them)."""
    request = parameters(node)
    for field, input_name in (("input_image_path", "src"), ("input_mask_path", "mask")):
        path = write_input(node, input_name)
        if path is not None:
            request[field] = path
    wired = {"controlnets": controlnets(node), "ip_adapters": ip_adapters(node)}
    return request | {field: entries for field, entries in wired.items() if entries}


def video_request(node: Any) -> dict[str, Any]:
    request = parameters(node)
    image = write_input(node, "src")
    if image is not None:
        request["input_image_path"] = image
    return request


def text_request(node: Any) -> dict[str, Any]:
    """A message to the text model: the prompt (with the src image), continuing the
    conversation of a text node wired into 'previous'."""
    request = parameters(node)
    previous = upstream(node, "previous")
    history = []
    if previous is not None and node_name(previous) == "text":
        history = json.loads(previous.parm("messages").eval() or "[]")
        if not history:
            raise DeferredDiffusionError(
                f"{previous.name()}: update it first (its conversation is empty)", "client_error"
            )
    prompt = node.parm("dd_prompt").eval()
    if not prompt.strip():
        raise DeferredDiffusionError(
            f"{node.name()}: write a prompt first", "client_error", "dd_prompt"
        )
    image = write_input(node, "src")
    request["messages"] = conversation(history, node.parm("dd_system").eval(), prompt, image)
    return request


def sequence_request(node: Any) -> dict[str, Any]:
    request = parameters(node)
    for role in ("scene", "protagonist", "antagonist"):
        path = write_input(node, role)
        if path is not None:
            request[f"{role}_reference_image"] = path
    return request


# The IP-Adapter each shot reference becomes, and how strongly it shows.
SHOT_REFERENCES = {
    "scene": ("style", 0.6),
    "protagonist": ("style-plus", 0.6),
    "antagonist": ("style-plus", 0.6),
}


def shot_requests(node: Any) -> tuple[dict[str, Any], FollowUp]:
    """The shot's image request (references as IP-Adapters, depth as a ControlNet, where the
    model takes them) and the video request that follows from its image."""
    image = parameters(node, 0)
    takes = adapters_of(image["model"])
    adapters = []
    for role, (kind, scale) in SHOT_REFERENCES.items():
        path = write_input(node, role)
        if path is not None and kind in takes["ip_adapters"]:
            adapters.append({"model": kind, "image_path": path, "scale": scale})
    if adapters:
        image["ip_adapters"] = adapters
    depth = write_input(node, "depth")
    if depth is not None and "depth" in takes["controlnets"]:
        image["controlnets"] = [{"model": "depth", "image_path": depth}]
    video = parameters(node, 1)

    def follow_up(done: list[Job]) -> list[Request]:
        still = done[0]["result"]["images"][0]["path"]
        return [("videos", video | {"input_image_path": still})]

    return image, follow_up


# --- running --------------------------------------------------------------------------


def set_status(node: Any, text: str) -> None:
    node.parm("dd_status").set(text)
    hou = _hou()
    if hou.isUIAvailable():
        hou.ui.setStatusMessage(f"{node.name()}: {text}")


def show_error(node: Any, error: DeferredDiffusionError) -> None:
    set_status(node, f"error: {error}")
    node.setColor(_hou().Color((0.8, 0.1, 0.1)))
    hou = _hou()
    if hou.isUIAvailable():
        hou.ui.displayMessage(str(error), severity=hou.severityType.Error, title=node.name())
    else:
        print(f"{node.path()}: {error}")


def reload_output(node: Any) -> None:
    reader = node.node("file1")
    if reader is not None:
        reader.parm("reload").pressButton()


def start(
    node: Any,
    requests: list[Request],
    on_done: Callable[[list[Job]], None],
    follow_up: FollowUp | None = None,
    client: Client | None = None,
) -> Run:
    """Run the jobs without blocking Houdini: a thread, with its news handed to the UI
    thread by hdefereval; in hython (no UI) in this thread."""
    hou = _hou()
    path = node.path()
    if path in RUNS:
        raise DeferredDiffusionError(f"{node.name()} is running already (Cancel stops it)", "busy")
    ui_available = hou.isUIAvailable()
    if ui_available:
        import hdefereval

        def ui(function: Callable[[], None]) -> None:
            hdefereval.executeDeferred(function)
    else:

        def ui(function: Callable[[], None]) -> None:
            function()

    def progress(update: Progress, number: int, total: int) -> None:
        which = f" (job {number} of {total})" if total > 1 else ""
        set_status(node, update.describe() + which)

    def done(jobs: list[Job]) -> None:
        RUNS.pop(path, None)
        node.setColor(hou.Color((0.2, 0.6, 0.2)))
        on_done(jobs)
        set_status(node, f"done: {len(jobs)} job(s), last {jobs[-1]['id']}")

    def failed(error: DeferredDiffusionError) -> None:
        RUNS.pop(path, None)
        show_error(node, error)

    run = Run(
        client or Client(),
        requests,
        ui,
        progress,
        done,
        failed,
        follow_up,
        lambda job: node.parm("dd_job_id").set(job["id"]),
    )
    RUNS[path] = run
    node.setColor(hou.Color((0.6, 0.6, 0.1)))
    set_status(node, "submitting")
    run.start(in_thread=ui_available)
    return run


def _output(node: Any, job: Job, parm: str, media: str, client: Client) -> str:
    """The path the node shows: where the job wrote it (the node's own path when it names
    one, so each frame shows), or, without one, a copy downloaded under $HIP."""
    if node.parm(parm).eval():
        return node.parm(parm).unexpandedString()
    output = job["result"]["images"][0] if media == "image" else job["result"]["video"]
    local = work_folder(node) / "outputs" / Path(output["path"]).name
    client.download(output["url"], local)
    return str(local)


def _guard(node: Any, build: Callable[[], None]) -> None:
    try:
        build()
    except DeferredDiffusionError as error:
        show_error(node, error)


def update(node: Any, client: Client | None = None) -> None:
    """Update: the node's job(s) from its parameters and inputs at the current frame."""
    _guard(node, lambda: _update(node, client))


def _update(node: Any, given: Client | None) -> None:
    name = node_name(node)
    client = given or Client()
    if name == "image":
        request = image_request(node)

        def image_done(jobs: list[Job]) -> None:
            node.parm("dd_output").set(
                _output(node, jobs[-1], "output_image_path", "image", client)
            )
            reload_output(node)

        start(node, [("images", request)], image_done, client=client)
    elif name == "video":

        def video_done(jobs: list[Job]) -> None:
            node.parm("dd_output").set(
                _output(node, jobs[-1], "output_video_path", "video", client)
            )
            reload_output(node)

        start(node, [("videos", video_request(node))], video_done, client=client)
    elif name == "text":

        def text_done(jobs: list[Job]) -> None:
            result = jobs[-1]["result"]
            node.parm("messages").set(json.dumps(result["chain_of_thought"], indent=2))
            node.parm("dd_response").set(result["response"])

        start(node, [("texts", text_request(node))], text_done, client=client)
    elif name == "sequence_agent":

        def agent_done(jobs: list[Job]) -> None:
            node.parm("dd_response").set(json.dumps(jobs[-1]["result"], indent=2))
            build(node)

        start(node, [("agentic", sequence_request(node))], agent_done, client=client)
    elif name == "shot":
        image, follow_up = shot_requests(node)

        def shot_done(jobs: list[Job]) -> None:
            node.parm("dd_output").set(
                _output(node, jobs[-1], "video_output_video_path", "video", client)
            )
            reload_output(node)

        start(node, [("images", image)], shot_done, follow_up, client=client)
    else:
        raise DeferredDiffusionError(f"{node.name()} has no job of its own", "client_error")


def frame_range_requests(node: Any, start_frame: float, end_frame: float) -> list[Request]:
    """One image request per frame (inputs written at each frame)."""
    hou = _hou()
    now = hou.frame()
    wanted = frames(start_frame, end_frame)
    requests = []
    # Writing the inputs of many frames takes a while: a progress window, Esc stops it.
    writing = (
        hou.InterruptableOperation(
            f"{node.name()}: writing inputs",
            long_operation_name="Deferred Diffusion",
            open_interrupt_dialog=True,
        )
        if hou.isUIAvailable()
        else contextlib.nullcontext()
    )
    try:
        with writing as operation:
            for index, frame in enumerate(wanted):
                if operation is not None:
                    operation.updateLongProgress(index / len(wanted), f"frame {frame}")
                hou.setFrame(frame)
                requests.append(("images", image_request(node)))
    except hou.OperationInterrupted:
        raise DeferredDiffusionError(
            "stopped while writing the inputs (Esc)", "cancelled"
        ) from None
    finally:
        hou.setFrame(now)
    return requests


def update_frame_range(node: Any, client: Client | None = None) -> None:
    """Update Frame Range: one job per frame of the playbar's range, the output reloaded
    when all are done."""

    def run() -> None:
        output = node.parm("output_image_path").unexpandedString()
        if "$F" not in output:
            raise DeferredDiffusionError(
                "a frame range needs a per-frame output_image_path (with $F4, e.g. "
                "$HIP/render/$OS.$F4.png)",
                "client_error",
                "output_image_path",
            )
        first, last = _hou().playbar.frameRange()
        requests = frame_range_requests(node, first, last)

        def done(_: list[Job]) -> None:
            node.parm("dd_output").set(output)
            reload_output(node)

        start(node, requests, done, client=client)

    _guard(node, run)


def cancel(node: Any) -> None:
    """Cancel: the node's jobs stop (queued ones never run)."""
    run = RUNS.get(node.path())
    if run is None:
        set_status(node, "nothing to cancel")
        return
    _guard(node, run.cancel)
    set_status(node, "cancelling")


def build(node: Any) -> list[Any]:
    """Build Nodes: image nodes for the scene and characters and a shot node per shot, from
    the breakdown in the node's Breakdown parameter (reused when they exist)."""
    text = node.parm("dd_response").eval()
    if not text.strip():
        show_error(node, DeferredDiffusionError("no breakdown yet: press Update", "client_error"))
        return []
    parent = node.parent()
    made: dict[str, Any] = {}
    x, y = node.position()
    for index, wanted in enumerate(breakdown_nodes(json.loads(text), node.name())):
        child = parent.node(wanted["name"])
        if child is None:
            child = parent.createNode(f"{NAMESPACE}::{wanted['type']}", wanted["name"])
        child.setPosition((x + 3 * (index % 4), y - 2 - 2 * (index // 4)))
        for name, value in wanted["parms"].items():
            child.parm(name).set(value)
        for position, source in wanted["inputs"].items():
            child.setInput(int(position), made[source])
        made[wanted["name"]] = child
    return list(made.values())
