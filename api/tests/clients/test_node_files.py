"""The HDAs (expanded) and the Nuke gizmos, parsed as files (no Houdini or Nuke runs here),
checked against this server's own OpenAPI spec and model list: every node exists with its
sections, parameter names are request fields, model menus are the server's models, and the
committed files are what hda/build.py generates now (the drift guard)."""

from __future__ import annotations

import ast
import email
import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deferred_diffusion import houdini
from deferred_diffusion import nuke as nuke_glue

from api.tests.common.test_server_process import REPO

NODES = ("image", "control_net", "ip_adapter", "video", "text", "sequence_agent", "shot")
GIZMOS = {
    "image": "DeferredDiffusionImage",
    "video": "DeferredDiffusionVideo",
    "text": "DeferredDiffusionText",
}
OTLS = REPO / "hda" / "otls"


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hda_build", REPO / "hda" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build() -> ModuleType:
    return load_build()


@pytest.fixture(scope="module")
def server(build: ModuleType) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """This checkout's OpenAPI spec and GET /api/models (the app in this process)."""
    return build.server_schema()


def request_fields(spec: dict[str, Any], route: str) -> set[str]:
    """Every field of the requests a route takes (the images route takes several)."""
    schemas = spec["components"]["schemas"]
    body = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields: set[str] = set()
    for option in body.get("anyOf", [body]):
        fields |= set(schemas[option["$ref"].rsplit("/", 1)[1]]["properties"])
    return fields


def component_fields(spec: dict[str, Any], name: str) -> set[str]:
    return set(spec["components"]["schemas"][name]["properties"])


def models_of(models: list[dict[str, Any]], domain: str) -> list[str]:
    return [m["name"] for m in models if m["domain"] == domain]


# --- DialogScript, as Houdini reads it ----------------------------------------------------

TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([{}])|([^\s{}"]+)')


def parse_dialog_script(text: str) -> list[Any]:
    """Tokens and {...} blocks, nested; quoted strings unescaped."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    stack: list[list[Any]] = [[]]
    for match in TOKEN.finditer(body):
        quoted, brace, word = match.groups()
        if brace == "{":
            stack.append([])
        elif brace == "}":
            block = stack.pop()
            stack[-1].append(block)
        elif quoted is not None:
            stack[-1].append(json.loads(f'"{quoted}"'))
        else:
            stack[-1].append(word)
    assert len(stack) == 1, "unbalanced braces"
    [script] = stack[0]
    return script


def parm_blocks(block: list[Any]) -> list[dict[str, Any]]:
    """The parm { } blocks, inside group blocks too, as dicts."""
    parms = []
    for word, following in zip(block, block[1:], strict=False):
        if word == "parm" and isinstance(following, list):
            parm: dict[str, Any] = {"tags": {}}
            for key, value in zip(following, following[1:], strict=False):
                if key in ("name", "label", "type", "hidewhen") and isinstance(value, str):
                    parm.setdefault(key, value)
                elif key == "default" and isinstance(value, list):
                    parm["default"] = value
                elif key == "menu" and isinstance(value, list):
                    parm["menu"] = value[0::2]
                elif key == "parmtag" and isinstance(value, list):
                    parm["tags"][value[0]] = value[1]
            parms.append(parm)
        elif word in ("groupsimple", "group") and isinstance(following, list):
            parms += parm_blocks(following)
    return parms


def operator_folder(name: str) -> Path:
    return OTLS / f"{name}.hda" / f"deferred__diffusion_8_8Cop_1{name.replace('_', '__')}"


def read_sections(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == '""'
    return [tuple(line.split("\t")) for line in lines[1:]]  # type: ignore[misc]


# --- the tests ----------------------------------------------------------------------------


def test_the_committed_files_are_what_build_generates(build: ModuleType, server: Any):
    files = build.generate(*server)
    stale = sorted(str(p.relative_to(REPO)) for p in build.generated_now() - set(files))
    changed = sorted(
        str(path.relative_to(REPO))
        for path, text in files.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    )
    assert not changed and not stale, (
        f"out of date: {changed}, stale: {stale}: run `.venv/bin/python hda/build.py` and commit"
    )


@pytest.mark.parametrize("name", NODES)
def test_every_node_is_an_expanded_hda(name: str):
    library = OTLS / f"{name}.hda"
    operator = f"deferred_diffusion::Cop/{name}"
    folder = operator_folder(name)
    assert (library / "houdini.hdalibrary").is_file()
    assert read_sections(library / "Sections.list") == [
        ("INDEX__SECTION", "INDEX_SECTION"),
        ("houdini.hdalibrary", "houdini.hdalibrary"),
        (folder.name, operator),
    ]
    # The folder's name is the operator's, coded as hotl codes section names.
    decoded = (
        folder.name.replace("__", "\0").replace("_8", ":").replace("_1", "/").replace("\0", "_")
    )
    assert decoded == operator
    index = dict(
        line.split(":", 1) for line in (library / "INDEX__SECTION").read_text().splitlines() if line
    )
    index = {key: value.strip() for key, value in index.items()}
    assert index["Operator"] == f"deferred_diffusion::{name}"
    assert index["Table"] == "Cop"
    assert index["Path"] == f"oplib:/{operator}?{operator}"
    sections = dict(read_sections(folder / "Sections.list"))
    for section in (
        "DialogScript",
        "CreateScript",
        "TypePropertiesOptions",
        "Help",
        "Tools.shelf",
        "PythonModule",
        "ExtraFileOptions",
        "InternalFileOptions",
        "Contents.gz",
    ):
        assert sections[section] == section
        expanded = folder / ("Contents.dir" if section == "Contents.gz" else section)
        assert expanded.exists(), expanded
    assert index["Inputs"] == f"0 to {len(houdini.node_spec(name)['inputs'])}"
    json.loads((folder / "ExtraFileOptions").read_text())
    json.loads((folder / "InternalFileOptions").read_text())
    ElementTree.parse(folder / "Tools.shelf")
    assert "CheckExternal := 1;" in (folder / "TypePropertiesOptions").read_text()
    assert (
        f"Creation script for deferred_diffusion::{name} operator"
        in (folder / "CreateScript").read_text()
    )


@pytest.mark.parametrize("name", NODES)
def test_the_dialog_script_parses_and_its_buttons_reach_the_package(name: str):
    folder = operator_folder(name)
    script = parse_dialog_script((folder / "DialogScript").read_text())
    assert script[script.index("name") + 1] == f"deferred_diffusion::{name}"
    inputs = [script[i + 2] for i, word in enumerate(script) if word == "input"]
    assert inputs == houdini.node_spec(name)["inputs"]
    parms = parm_blocks(script)
    names = [parm["name"] for parm in parms]
    assert len(names) == len(set(names)), names
    module = ast.parse((folder / "PythonModule").read_text())
    functions = {f.name for f in module.body if isinstance(f, ast.FunctionDef)}
    for function in functions:
        assert callable(getattr(houdini, function)), function  # it only forwards there
    buttons = [p for p in parms if p["type"] == "button"]
    has_job = houdini.node_spec(name)["requests"][0]["kind"] is not None
    assert ("dd_update" in {p["name"] for p in buttons}) == has_job
    for button in buttons:
        assert button["tags"]["script_callback_language"] == "python"
        called = re.fullmatch(r"hou\.phm\(\)\.(\w+)\(kwargs\)", button["tags"]["script_callback"])
        assert called and called.group(1) in functions


def hda_parms(name: str) -> list[dict[str, Any]]:
    text = (operator_folder(name) / "DialogScript").read_text()
    return [p for p in parm_blocks(parse_dialog_script(text)) if not p["name"].startswith("dd_")]


# Request fields a node fills from its inputs or the nodes upstream, not from a parameter.
FROM_INPUTS = {
    "image": {"input_image_path", "input_mask_path", "controlnets", "ip_adapters"},
    "control_net": {"image_path"},
    "ip_adapter": {"image_path", "mask_path"},
    "video": {"input_image_path"},
}


@pytest.mark.parametrize(
    ("name", "fields_of"),
    [
        ("image", lambda spec: request_fields(spec, "/api/images")),
        ("control_net", lambda spec: component_fields(spec, "ControlNet")),
        ("ip_adapter", lambda spec: component_fields(spec, "IpAdapter")),
        ("video", lambda spec: request_fields(spec, "/api/videos")),
        ("text", lambda spec: request_fields(spec, "/api/texts")),
    ],
)
def test_parameters_are_the_request_fields(name: str, fields_of: Any, server: Any):
    """Named as the fields, and every field there (a field added to the server and not to
    the node fails here)."""
    fields = fields_of(server[0])
    names = {parm["name"] for parm in hda_parms(name)}
    assert names <= fields
    if name != "text":  # text: the conversation is built from dd_prompt and the inputs
        assert names == fields - FROM_INPUTS[name]


def test_the_shots_parameters_are_image_and_video_fields(server: Any):
    names = {parm["name"] for parm in hda_parms("shot")}
    image = {n for n in names if not n.startswith("video_")}
    video = {n.removeprefix("video_") for n in names if n.startswith("video_")}
    assert image <= request_fields(server[0], "/api/images")
    assert video <= request_fields(server[0], "/api/videos")
    assert {"model", "prompt", "output_image_path"} <= image
    assert {"model", "prompt", "input_image_path"} - video == {"input_image_path"}


def test_the_sequence_agents_parameters_are_the_agentic_request_fields(server: Any):
    spec, models = server
    fields = request_fields(spec, "/api/agentic/sequences")
    parms = {parm["name"]: parm for parm in hda_parms("sequence_agent")}
    references = {f"{role}_reference_image" for role in ("scene", "protagonist", "antagonist")}
    assert set(parms) == fields - references
    assert parms["texts_model"]["menu"] == models_of(models, "texts")


@pytest.mark.parametrize(
    ("name", "parm", "domain"),
    [
        ("image", "model", "images"),
        ("video", "model", "videos"),
        ("text", "model", "texts"),
        ("shot", "video_model", "videos"),
    ],
)
def test_model_menus_are_the_servers_models(name: str, parm: str, domain: str, server: Any):
    menus = {p["name"]: p["menu"] for p in hda_parms(name) if "menu" in p}
    assert menus[parm] == models_of(server[1], domain)


def test_menus_of_kinds_are_the_servers_enums(server: Any):
    schemas = server[0]["components"]["schemas"]
    control = {p["name"]: p.get("menu") for p in hda_parms("control_net")}
    adapter = {p["name"]: p.get("menu") for p in hda_parms("ip_adapter")}
    assert control["model"] == schemas["ControlNetKind"]["enum"]
    assert adapter["model"] == schemas["IpAdapterKind"]["enum"]
    assert adapter["scale_layers"] == schemas["ScaleLayers"]["enum"]
    shot = {p["name"]: p.get("menu") for p in hda_parms("shot")}
    text_to_image = [m["name"] for m in server[1] if "text_to_image" in m["modes"]]
    assert shot["model"] == text_to_image


def test_fields_a_model_does_not_take_are_hidden_for_it(server: Any):
    """depth-anything takes no prompt: the image node hides Prompt when it is chosen."""
    parms = {p["name"]: p for p in hda_parms("image")}
    assert '{ model == "depth-anything" }' in parms["prompt"]["hidewhen"]
    assert "hidewhen" not in parms["model"] and "hidewhen" not in parms["output_image_path"]
    depth_fields = component_fields(server[0], "DepthRequest")
    for name, parm in parms.items():
        hidden = '{ model == "depth-anything" }' in parm.get("hidewhen", "")
        assert hidden == (name not in depth_fields), name


@pytest.mark.parametrize("name", NODES)
def test_the_network_inside(name: str):
    mime = email.message_from_string(
        (operator_folder(name) / "Contents.dir" / "Contents.mime").read_text()
    )
    parts = {
        str(part.get_filename()): str(part.get_payload())
        for part in mime.walk()
        if part.get_filename()
    }
    assert parts["node_type"].strip() == "Cop"
    assert parts["hdaroot.init"].startswith(f"type = deferred_diffusion::{name}")
    order = parts["hdaroot.order"].split()
    assert order[0] == str(len(order) - 1) and order[-1] == "output1"
    types = {child: parts[f"hdaroot/{child}.init"].split()[2] for child in order[1:]}
    if houdini.node_spec(name)["reads"]:
        assert types == {"file1": "file", "output1": "output"}
        assert 'chs(\\"../dd_output\\")' in parts["hdaroot/file1.chn"]
    else:
        assert types == {"input1": "input", "output1": "output"}
    assert "0 \t" + order[1] + " 0 1" in parts["hdaroot/output1.def"]


def test_the_package_file_adds_the_otls_and_the_python_package():
    package = json.loads((REPO / "hda" / "deferred_diffusion.json").read_text())
    text = json.dumps(package)
    assert "$HOUDINI_PACKAGE_PATH" in text and "/python" in text
    assert package["hpath"] == "$DEFERRED_DIFFUSION"
    assert (REPO / "hda" / "otls").is_dir() and (REPO / "hda" / "python").is_dir()


# --- Nuke -------------------------------------------------------------------------------

KNOB = re.compile(r"^ addUserKnob \{(\d+) (\S+)(.*)\}$", re.MULTILINE)


def gizmo_knobs(name: str) -> dict[str, dict[str, Any]]:
    text = (REPO / "nuke" / f"{GIZMOS[name]}.gizmo").read_text()
    assert text.count("Gizmo {") == 1 and text.rstrip().endswith("end_group")
    knobs = {}
    for code, knob_name, rest in KNOB.findall(text):
        menu = re.search(r" M \{(.*)\}", rest)
        knobs[knob_name] = {
            "code": int(code),
            "menu": re.findall(r'"((?:[^"\\]|\\.)*)"', menu.group(1)) if menu else None,
            "script": re.search(r'T "(.*?)"', rest),
        }
    return knobs


@pytest.mark.parametrize(
    ("name", "route", "domain"),
    [
        ("image", "/api/images", "images"),
        ("video", "/api/videos", "videos"),
        ("text", "/api/texts", "texts"),
    ],
)
def test_gizmo_knobs_are_request_fields_and_menus_the_servers_models(
    name: str, route: str, domain: str, server: Any
):
    knobs = gizmo_knobs(name)
    fields = {k for k in knobs if not k.startswith("dd_") and k != "deferred_diffusion"}
    assert fields <= request_fields(server[0], route)
    assert fields == {p["name"] for p in hda_parms(name)}  # the same as the HDA's
    assert knobs["model"]["code"] == 4 and knobs["model"]["menu"] == models_of(server[1], domain)
    for button in ("dd_update", "dd_cancel"):
        assert knobs[button]["code"] == 22
        called = re.search(
            r"deferred_diffusion\.nuke\.(\w+)\(nuke\.thisNode\(\)\)",
            knobs[button]["script"].group(1),
        )
        assert called and callable(getattr(nuke_glue, called.group(1)))
    text = (REPO / "nuke" / f"{GIZMOS[name]}.gizmo").read_text()
    inputs = re.findall(r"^ Input \{\n  inputs 0\n  name (\w+)", text, re.MULTILINE)
    assert sorted(inputs) == sorted(houdini.node_spec(name)["nuke_inputs"])
    assert f" inputs {len(inputs)}\n" in text


def test_the_nuke_menu_adds_every_gizmo():
    source = (REPO / "nuke" / "menu.py").read_text()
    ast.parse(source)
    for gizmo in GIZMOS.values():
        assert f'"{gizmo}"' in source and (REPO / "nuke" / f"{gizmo}.gizmo").is_file()
    assert 'addMenu("DeferredDiffusion")' in source
