"""A small stand-in for the ``hou`` calls deferred_diffusion.houdini makes (no Houdini runs
here): nodes with parameters and inputs, a ROP Image Output that writes the picture of the
node it renders, the frame, the playbar and the status bar. Values are expanded as
Houdini does for $HIP, $OS and $F4."""

from __future__ import annotations

import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

SPEC = json.loads(
    (Path(__file__).parents[3] / "hda/python/deferred_diffusion/nodes.json").read_text()
)


class Parm:
    def __init__(self, node: Node, name: str, value: Any) -> None:
        self.node, self.name, self.value = node, name, value
        self.pressed = 0

    def set(self, value: Any) -> None:
        self.value = value

    def unexpandedString(self) -> str:
        return str(self.value)

    def eval(self) -> Any:
        if isinstance(self.value, str):
            return self.node.hou.expand(self.value, self.node)
        return self.value

    def pressButton(self) -> None:
        self.pressed += 1
        if self.node.on_press is not None:
            self.node.on_press(self)


class NodeType:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class Node:
    def __init__(self, hou: FakeHou, name: str, type_name: str, parent: Node | None) -> None:
        self.hou, self._name, self._type, self._parent = hou, name, NodeType(type_name), parent
        self.parms: dict[str, Parm] = {}
        self._inputs: list[Node | None] = []
        self.children: dict[str, Node] = {}
        self.picture: Path | None = None  # what a COP "renders" to (a file to copy)
        self.color: Any = None
        self._position = (0.0, 0.0)
        self.on_press: Callable[[Parm], None] | None = None
        self.destroyed = False

    # what deferred_diffusion.houdini calls
    def name(self) -> str:
        return self._name

    def path(self) -> str:
        return (self._parent.path() if self._parent else "") + "/" + self._name

    def type(self) -> NodeType:
        return self._type

    def parm(self, name: str) -> Parm:
        return self.parms[name]

    def inputs(self) -> list[Node | None]:
        return list(self._inputs)

    def setInput(self, index: int, node: Node | None) -> None:
        self._inputs += [None] * (index + 1 - len(self._inputs))
        self._inputs[index] = node

    def parent(self) -> Node:
        assert self._parent is not None
        return self._parent

    def node(self, name: str) -> Node | None:
        return self.children.get(name)

    def createNode(self, type_name: str, name: str) -> Node:
        if type_name.startswith("deferred_diffusion::"):
            child = self.hou.asset(type_name.split("::")[1], name, self)
        else:
            child = Node(self.hou, name, type_name, self)
            if type_name == "rop_image":
                for parm in ("coppath", "copoutput", "execute"):
                    child.parms[parm] = Parm(child, parm, "")
                child.on_press = self.hou.render
        self.children[name] = child
        return child

    def destroy(self) -> None:
        self.destroyed = True
        if self._parent is not None:
            self._parent.children.pop(self._name, None)

    def setColor(self, color: Any) -> None:
        self.color = color

    def position(self) -> tuple[float, float]:
        return self._position

    def setPosition(self, position: tuple[float, float]) -> None:
        self._position = position


class FakeHou(types.ModuleType):
    """``hou``: install it as ``sys.modules['hou']``."""

    def __init__(self, hip: Path, ui: bool = False) -> None:
        super().__init__("hou")
        self.hip = hip
        self.ui_available = ui
        self.current_frame = 1.0
        self.frame_range = (1.0, 1.0)
        self.status: list[str] = []
        self.messages: list[str] = []
        self.renders: list[tuple[str, str, float]] = []
        self.progress: list[float] = []
        self.interrupt_at: float | None = None
        self.root = Node(self, "obj", "copnet", None)
        self.copnet = self.root.createNode("copnet", "copnet1")
        hou = self
        self.playbar = types.SimpleNamespace(frameRange=lambda: hou.frame_range)
        self.ui = types.SimpleNamespace(
            setStatusMessage=self.status.append,
            displayMessage=lambda text, **_: self.messages.append(text),
        )
        self.severityType = types.SimpleNamespace(Error="error")

    class OperationInterrupted(Exception):
        pass

    def InterruptableOperation(self, *_: Any, **__: Any) -> Any:
        """A progress window; the artist presses Esc at progress ``interrupt_at``."""
        hou = self

        class Operation:
            def __enter__(self) -> Operation:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def updateLongProgress(self, fraction: float, _: str) -> None:
                hou.progress.append(fraction)
                if hou.interrupt_at is not None and fraction >= hou.interrupt_at:
                    raise hou.OperationInterrupted()

        return Operation()

    def Color(self, rgb: tuple[float, float, float]) -> tuple[float, float, float]:
        return rgb

    def isUIAvailable(self) -> bool:
        return self.ui_available

    def frame(self) -> float:
        return self.current_frame

    def setFrame(self, frame: float) -> None:
        self.current_frame = frame

    def expandString(self, text: str) -> str:
        return self.expand(text, None)

    def expand(self, text: str, node: Node | None) -> str:
        text = text.replace("$HIP", str(self.hip)).replace("$F4", f"{int(self.current_frame):04d}")
        return text.replace("$OS", node.name()) if node is not None else text

    def render(self, parm: Parm) -> None:
        """A ROP Image Output's execute: the COP it names, written to its output path."""
        rop = parm.node
        path = rop.parm("coppath").eval()
        source = self.find(path)
        target = Path(rop.parm("copoutput").eval())
        assert source is not None and source.picture is not None, path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source.picture, target)
        self.renders.append((path, str(target), self.current_frame))

    def find(self, path: str) -> Node | None:
        node: Node | None = self.root
        for part in path.strip("/").split("/")[1:]:
            node = node.node(part) if node else None
        return node

    # building a scene
    def asset(self, kind: str, name: str, parent: Node | None = None, **values: Any) -> Node:
        """One of our HDAs with its parameters at their defaults (nodes.json), and its
        inner file COP."""
        spec = SPEC["nodes"][kind]
        node = Node(self, name, f"deferred_diffusion::{kind}", parent or self.copnet)
        for parm in spec["parms"]:
            default = parm["default"]
            value = json.dumps(default) if parm["type"] == "json" else default
            node.parms[parm["name"]] = Parm(node, parm["name"], value)
        for control in spec["controls"]:
            node.parms[control] = Parm(node, control, "")
        if spec["reads"]:
            reader = Node(self, "file1", "file", node)
            reader.parms["reload"] = Parm(reader, "reload", 0)
            node.children["file1"] = reader
        for key, value in values.items():
            node.parms[key].set(value)
        node.parent().children[name] = node
        return node

    def cop(self, name: str, picture: Path) -> Node:
        """A COP whose image is ``picture``."""
        node = self.copnet.createNode("file", name)
        node.picture = picture
        return node


def write_picture(path: Path, size: tuple[int, int] = (64, 64), grey: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (grey, grey // 2, 255 - grey)).save(path)
    return path
