"""The gizmos' logic (deferred_diffusion.nuke) on a small fake of the ``nuke`` calls it
makes: requests from the knobs and inputs, text chaining, and Update with its progress bar
and Cancel against the real server. Also: the package imports neither Houdini, Nuke nor the
server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deferred_diffusion import Client
from deferred_diffusion import nuke as glue

from api.tests.clients.conftest import CLIENT_PACKAGE, wait_for
from api.tests.clients.fake_hou import SPEC, write_picture
from api.tests.common.test_server_process import Server


class Knob:
    def __init__(self, value: Any) -> None:
        self._value = value
        self.executed = 0

    def value(self) -> Any:
        return self._value

    def setValue(self, value: Any) -> None:
        self._value = value

    def execute(self) -> None:
        self.executed += 1


class PathKnob(Knob):
    """A text knob whose value may hold Nuke's #### (the frame)."""

    def __init__(self, value: Any, nuke: FakeNuke) -> None:
        super().__init__(value)
        self.nuke = nuke

    def evaluate(self) -> str:
        return str(self._value).replace("####", f"{int(self.nuke.current_frame):04d}")


class Gizmo:
    def __init__(self, nuke: FakeNuke, kind: str, name: str, **values: Any) -> None:
        self.kind, self._name = kind, name
        self.knobs: dict[str, Knob] = {}
        for parm in SPEC["nodes"][kind]["parms"]:
            default = json.dumps(parm["default"]) if parm["type"] == "json" else parm["default"]
            self.knobs[parm["name"]] = (
                PathKnob(default, nuke) if parm["type"] == "path" else Knob(default)
            )
        for control in (
            "dd_status",
            "dd_job_id",
            "dd_output",
            "dd_prompt",
            "dd_system",
            "dd_response",
        ):
            self.knobs[control] = Knob("")
        for key, value in values.items():
            self.knobs[key].setValue(value)
        self.inputs: dict[int, Any] = {}
        self.reader = types.SimpleNamespace(knobs={"reload": Knob(0)})

    def Class(self) -> str:
        return "DeferredDiffusion" + self.kind.title()

    def name(self) -> str:
        return self._name

    def fullName(self) -> str:
        return self._name

    def __getitem__(self, name: str) -> Knob:
        return self.knobs[name]

    def input(self, index: int) -> Any:
        return self.inputs.get(index)

    def node(self, name: str) -> Any:
        return self.reader.knobs if name == "Read1" else None


class FakeNuke(types.ModuleType):
    def __init__(self, script: Path) -> None:
        super().__init__("nuke")
        self.script = script
        self.current_frame = 1001
        self.messages: list[str] = []
        self.progress: list[tuple[str, Any]] = []
        self.cancel_pressed = False
        fake = self

        class Write:
            def __init__(self, file: str, **_: Any) -> None:
                self.file, self.source = file, None

            def setInput(self, _: int, source: Any) -> None:
                self.source = source

        class ProgressTask:
            def __init__(self, title: str) -> None:
                fake.progress.append(("title", title))

            def setProgress(self, percent: int) -> None:
                fake.progress.append(("percent", percent))

            def setMessage(self, message: str) -> None:
                fake.progress.append(("message", message))

            def isCancelled(self) -> bool:
                return fake.cancel_pressed

        self.nodes = types.SimpleNamespace(Write=Write)
        self.ProgressTask = ProgressTask

    def root(self) -> Any:
        return types.SimpleNamespace(name=lambda: str(self.script))

    def frame(self) -> int:
        return self.current_frame

    def execute(self, write: Any, first: int, last: int) -> None:
        assert first == last == self.current_frame
        Path(write.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(write.source.picture, write.file)

    def delete(self, _: Any) -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)

    def executeInMainThread(self, function: Callable[[], None]) -> None:
        function()


@pytest.fixture
def nuke(server_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNuke]:
    fake = FakeNuke(server_root / tmp_path.name / "comp.nk")
    monkeypatch.setitem(sys.modules, "nuke", fake)
    yield fake
    glue.RUNS.clear()


def plate(path: Path) -> Any:
    return types.SimpleNamespace(picture=write_picture(path), Class=lambda: "Read")


def test_the_request_from_knobs_and_inputs(nuke: FakeNuke, tmp_path: Path):
    node = Gizmo(nuke, "image", "DD1", model="sdxl", seed=5, prompt="a lighthouse")
    node.inputs[0] = plate(tmp_path / "plate.png")
    kind, body = glue.request(node)
    folder = nuke.script.parent / "deferred_diffusion" / "DD1"
    assert kind == "images"
    assert body["input_image_path"] == str(folder / "inputs/src.1001.png")
    assert Path(body["input_image_path"]).is_file() and "input_mask_path" not in body
    assert {
        "model": "sdxl",
        "seed": 5,
        "prompt": "a lighthouse",
        "strength": 0.5,
    }.items() <= body.items()
    assert "num_inference_steps" not in body  # 0: the model's default

    first = Gizmo(nuke, "text", "T1", dd_prompt="Describe it.")
    first.inputs[0] = plate(tmp_path / "plate.png")
    second = Gizmo(nuke, "text", "T2", dd_prompt="Shorter.")
    second.inputs[1] = first
    history = [
        {"role": "user", "content": "Describe it."},
        {"role": "assistant", "content": "A plate."},
    ]
    first["messages"].setValue(json.dumps(history))
    assert glue.request(second) == (
        "texts",
        {"model": "qwen-2.5-vl", "messages": history + [{"role": "user", "content": "Shorter."}]},
    )


def test_update_shows_progress_and_points_the_read_at_the_output(
    nuke: FakeNuke, server: Server, server_root: Path
):
    output = f"{server_root}/nuke/DD2.####.png"
    node = Gizmo(
        nuke,
        "image",
        "DD2",
        model="sd1.5",
        num_inference_steps=2,
        max_width=64,
        max_height=64,
        output_image_path=output,
    )
    with Client(server.url) as client:
        glue.update(node, client)
        wait_for(lambda: "DD2" not in glue.RUNS, "the job to end")
    assert node["dd_status"].value().startswith("done"), node["dd_status"].value()
    assert node["dd_output"].value() == f"{server_root}/nuke/DD2.1001.png"
    assert Path(node["dd_output"].value()).is_file()
    assert node.reader.knobs["reload"].executed == 1
    assert ("percent", 100) in nuke.progress and any(
        k == "message" and "running" in v for k, v in nuke.progress
    )


def test_the_progress_bars_cancel_cancels_the_job(nuke: FakeNuke, server: Server):
    node = Gizmo(
        nuke,
        "image",
        "DD3",
        model="sd1.5",
        num_inference_steps=500,
        max_width=256,
        max_height=256,
        output_image_path="",
    )
    with Client(server.url) as client:
        glue.update(node, client)
        wait_for(lambda: "running" in node["dd_status"].value(), "the job to run")
        nuke.cancel_pressed = True
        wait_for(lambda: "DD3" not in glue.RUNS, "the job to end")
        assert client.get(node["dd_job_id"].value())["status"] == "cancelled"
    assert node["dd_status"].value().startswith("error: cancelled")
    assert nuke.messages and "cancelled" in nuke.messages[-1]


def test_the_package_imports_no_houdini_nuke_or_server():
    code = (
        "import sys, deferred_diffusion, deferred_diffusion.houdini, deferred_diffusion.nuke, "
        "deferred_diffusion.__main__\n"
        "found = {'hou', 'nuke', 'hdefereval', 'api', 'torch', 'fastapi'} & set(sys.modules)\n"
        "assert not found, found\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=CLIENT_PACKAGE, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
