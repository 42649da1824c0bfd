"""The Nuke side of the gizmos (nuke/DeferredDiffusion*.gizmo): what their Update and
Cancel buttons call.

Update renders the gizmo's inputs to PNGs beside the script (a Write node per input, at
the current frame), builds the request from the knobs (named as the request fields), and
runs the job in a thread with a progress bar whose Cancel cancels the job; when it is done
the gizmo's Read shows the output. ``nuke`` is imported only when a function is called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deferred_diffusion.client import Client, DeferredDiffusionError, Job, Progress
from deferred_diffusion.nodes import conversation, node_spec, request_from_values
from deferred_diffusion.runner import Run

RUNS: dict[str, Run] = {}  # node full name -> its run in progress
GIZMO_PREFIX = "DeferredDiffusion"
# The field that names where a gizmo's output goes.
OUTPUTS = {"image": "output_image_path", "video": "output_video_path"}


def _nuke() -> Any:
    import nuke  # only inside Nuke

    return nuke


def node_name(node: Any) -> str:
    """'image', 'video' or 'text' for our gizmos, '' for any other node."""
    kind = node.Class()
    return kind[len(GIZMO_PREFIX) :].lower() if kind.startswith(GIZMO_PREFIX) else ""


def inputs(node: Any) -> list[str]:
    """The gizmo's inputs, in order (nodes.json)."""
    return node_spec(node_name(node))["nuke_inputs"]


def knob(node: Any, name: str) -> Any:
    """A knob's value, text knobs with their expressions evaluated (paths: [value ...], ####
    at the current frame)."""
    item = node[name]
    value = item.value()
    if isinstance(value, str) and hasattr(item, "evaluate"):
        return item.evaluate()
    return value


def parameters(node: Any) -> dict[str, Any]:
    return request_from_values(node_name(node), lambda name: knob(node, name))


def work_folder(node: Any) -> Path:
    script = _nuke().root().name()
    base = Path(script).parent if script and script != "Root" else Path.home()
    return base / "deferred_diffusion" / node.name()


def write_input(node: Any, input_name: str) -> str | None:
    """Render what is wired into ``input_name`` at the current frame to a PNG (a path the
    server reads), or None when nothing is wired."""
    nuke = _nuke()
    source = node.input(inputs(node).index(input_name))
    if source is None:
        return None
    frame = int(nuke.frame())
    path = work_folder(node) / "inputs" / f"{input_name}.{frame:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write = nuke.nodes.Write(file=str(path).replace("\\", "/"), file_type="png", channels="rgba")
    try:
        write.setInput(0, source)
        nuke.execute(write, frame, frame)
    finally:
        nuke.delete(write)
    return str(path)


def request(node: Any) -> tuple[str, dict[str, Any]]:
    """The gizmo's (kind, request)."""
    name = node_name(node)
    body = parameters(node)
    if name == "text":
        previous = node.input(inputs(node).index("previous"))
        history = []
        if previous is not None and node_name(previous) == "text":
            history = json.loads(previous["messages"].value() or "[]")
        prompt = node["dd_prompt"].value()
        if not prompt.strip():
            raise DeferredDiffusionError(f"{node.name()}: write a prompt first", "client_error")
        image = write_input(node, "src")
        body["messages"] = conversation(history, node["dd_system"].value(), prompt, image)
        return "texts", body
    fields = {"image": (("input_image_path", "src"), ("input_mask_path", "mask"))}
    for field, input_name in fields.get(name, (("input_image_path", "src"),)):
        path = write_input(node, input_name)
        if path is not None:
            body[field] = path
    return node_spec(name)["requests"][0]["kind"], body


def update(node: Any, client: Client | None = None) -> None:
    """Update: submit the gizmo's job; a progress bar follows it; the Read shows the output."""
    nuke = _nuke()
    try:
        if node.fullName() in RUNS:
            raise DeferredDiffusionError(f"{node.name()} is running already", "busy")
        kind, body = request(node)
    except DeferredDiffusionError as error:
        node["dd_status"].setValue(f"error: {error}")
        nuke.message(str(error))
        return
    client = client or Client()
    task = nuke.ProgressTask(f"Deferred Diffusion: {node.name()}")
    name = node_name(node)

    def ui(function: Any) -> None:
        nuke.executeInMainThread(function)

    def progress(update: Progress, number: int, total: int) -> None:
        if task.isCancelled():
            run.cancel()
        if update.fraction is not None:
            task.setProgress(int(update.fraction * 100))
        task.setMessage(update.describe())
        node["dd_status"].setValue(update.describe())

    def done(jobs: list[Job]) -> None:
        RUNS.pop(node.fullName(), None)
        task.setProgress(100)
        result = jobs[-1]["result"]
        if name == "text":
            node["messages"].setValue(json.dumps(result["chain_of_thought"], indent=2))
            node["dd_response"].setValue(result["response"])
        else:
            output = result["images"][0] if name == "image" else result["video"]
            field = OUTPUTS[name]
            path = knob(node, field) or str(
                client.download(
                    output["url"], work_folder(node) / "outputs" / Path(output["path"]).name
                )
            )
            node["dd_output"].setValue(path)
            reader = node.node("Read1")
            if reader is not None:
                reader["reload"].execute()
        node["dd_status"].setValue(f"done: {jobs[-1]['id']}")

    def failed(error: DeferredDiffusionError) -> None:
        RUNS.pop(node.fullName(), None)
        node["dd_status"].setValue(f"error: {error}")
        nuke.message(str(error))

    run = Run(
        client,
        [(kind, body)],
        ui,
        progress,
        done,
        failed,
        on_submitted=lambda job: node["dd_job_id"].setValue(job["id"]),
    )
    RUNS[node.fullName()] = run
    run.start()


def cancel(node: Any) -> None:
    """Cancel: the gizmo's job stops (a queued one never runs)."""
    run = RUNS.get(node.fullName())
    if run is not None:
        run.cancel()
        node["dd_status"].setValue("cancelling")
