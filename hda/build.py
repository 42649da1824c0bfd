"""Generate the clients' node files from the server's own schema, so they never drift from it.

    .venv/bin/python hda/build.py          # rewrite the generated files
    .venv/bin/python hda/build.py --check  # exit 1 if any generated file is out of date

It starts the app in this process (a scratch data dir, no model loaded), reads its OpenAPI
spec and GET /api/models, and writes:

- ``hda/python/deferred_diffusion/nodes.json``: each node's parameters (named as the
  request fields they fill), inputs, model menus and which fields each model takes; the
  package's Houdini and Nuke glue builds requests from it;
- ``hda/otls/<node>.hda/``: one Copernicus COP HDA per node, expanded (the text form
  ``hotl -t`` writes): ``houdini.hdalibrary``, ``Sections.list``, ``INDEX__SECTION`` and
  the operator folder (``DialogScript``, ``CreateScript``, ``TypePropertiesOptions``,
  ``Help``, ``Tools.shelf``, ``PythonModule``, ``ExtraFileOptions``,
  ``InternalFileOptions``, ``Contents.dir/``);
- ``nuke/DeferredDiffusion<Node>.gizmo`` for image, video and text.

A test runs ``generate()`` and fails when the committed files differ: add a request field
or a model to the server, run this script, commit the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HDA = REPO / "hda"
OTLS = HDA / "otls"
NUKE = REPO / "nuke"
SPEC = HDA / "python" / "deferred_diffusion" / "nodes.json"
NAMESPACE = "deferred_diffusion"
MODIFIED = "Thu Nov 26 12:00:00 2026"  # fixed, so that generating twice gives the same files
BOUNDARY = "HOUDINIMIMEBOUNDARY0xD3ADD339-0x00000F49-0x56B122C9-0x00000001HOUDINIMIMEBOUNDARY"

# The images route takes one request per kind of model; a model's first mode says which.
IMAGE_TASK_SCHEMAS = {
    "upscale": "UpscaleRequest",
    "depth": "DepthRequest",
    "segmentation": "SegmentationRequest",
}


@dataclass(frozen=True)
class Fields:
    """Request fields that become parameters: those of ``schemas`` (merged), less
    ``exclude`` (filled from inputs or upstream nodes), named ``prefix`` + field."""

    kind: str | None  # the job kind they are a request of (None: part of another's)
    schemas: tuple[str, ...]
    exclude: frozenset[str] = frozenset()
    only: tuple[str, ...] | None = None  # just these, in this order
    prefix: str = ""
    model_domain: str | None = None  # `model` is a menu of this domain's models
    model_modes: frozenset[str] | None = None  # ... that can do one of these
    default_modes: frozenset[str] | None = None  # the first that can do one of these: default
    menus: dict[str, str] = field(default_factory=dict)  # field -> domain of its model menu


@dataclass(frozen=True)
class Control:
    """A parameter of the node itself (not a request field): named ``dd_*``."""

    name: str
    label: str
    type: str  # button, string, text (multi-line), label
    help: str = ""
    callback: str | None = None  # the PythonModule function a button calls


@dataclass(frozen=True)
class Node:
    name: str
    label: str
    help: str
    inputs: tuple[str, ...]
    fields: tuple[Fields, ...]
    controls: tuple[Control, ...]
    reads: str | None = None  # "image" / "video": the node shows dd_output (a file COP)
    nuke_inputs: tuple[str, ...] | None = None  # a Nuke gizmo too, with these inputs


UPDATE = Control(
    "dd_update",
    "Update",
    "button",
    "Write the inputs to $HIP, submit the job and reload the output when it is done; the "
    "UI stays free and the status bar shows progress.",
    "update",
)
CANCEL = Control("dd_cancel", "Cancel", "button", "Cancel the running job.", "cancel")
STATUS = Control("dd_status", "Status", "string", "The job's status or the server's error.")
JOB_ID = Control(
    "dd_job_id", "Job", "string", "The last job's id (python -m deferred_diffusion get ID)."
)
OUTPUT = Control("dd_output", "Output", "string", "The file the node shows: the last job's output.")
COMMON = (UPDATE, CANCEL, STATUS, JOB_ID)

GENERATIVE_IMAGE = (
    "model",
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "max_width",
    "max_height",
    "output_image_path",
)
SHOT_VIDEO = (
    "model",
    "prompt",
    "negative_prompt",
    "seed",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "fps",
    "output_video_path",
)

NODES = (
    Node(
        "image",
        "DD Image",
        "Text to image, image to image, inpainting, upscaling, depth or segmentation on the "
        "deferred-diffusion server (the mode follows from the inputs). Wire control_net and "
        "ip_adapter nodes into the extra inputs.",
        (
            "src",
            "mask",
            "control_net1",
            "control_net2",
            "ip_adapter1",
            "ip_adapter2",
            "ip_adapter3",
        ),
        (
            Fields(
                "images",
                ("ImageRequest", *IMAGE_TASK_SCHEMAS.values()),
                exclude=frozenset(
                    {"input_image_path", "input_mask_path", "controlnets", "ip_adapters"}
                ),
                model_domain="images",
            ),
        ),
        (
            *COMMON,
            Control(
                "dd_frame_range",
                "Update Frame Range",
                "button",
                "One job per frame of the playbar's range (inputs and output_image_path at "
                "each frame); the output reloads when all are done.",
                "update_frame_range",
            ),
            OUTPUT,
        ),
        reads="image",
        nuke_inputs=("src", "mask"),
    ),
    Node(
        "control_net",
        "DD ControlNet",
        "A ControlNet for the image node downstream: its src input is the control image.",
        ("src",),
        (Fields(None, ("ControlNet",), exclude=frozenset({"image_path"})),),
        (),
    ),
    Node(
        "ip_adapter",
        "DD IP-Adapter",
        "An IP-Adapter for the image node downstream: src is the reference, mask where it acts.",
        ("src", "mask"),
        (Fields(None, ("IpAdapter",), exclude=frozenset({"image_path", "mask_path"})),),
        (),
    ),
    Node(
        "video",
        "DD Video",
        "Image to video (src wired) or text to video on the deferred-diffusion server; the "
        "node shows the mp4.",
        ("src",),
        (
            Fields(
                "videos",
                ("VideoRequest",),
                exclude=frozenset({"input_image_path"}),
                model_domain="videos",
            ),
        ),
        (*COMMON, OUTPUT),
        reads="video",
        nuke_inputs=("src",),
    ),
    Node(
        "text",
        "DD Text",
        "Ask the vision-language model about the src image. Wire another text node into "
        "'previous' to continue its conversation; the conversation is kept in Messages.",
        ("src", "previous"),
        (
            Fields(
                "texts",
                ("TextRequest",),
                only=("model", "temperature", "seed", "max_tokens", "messages"),
                model_domain="texts",
            ),
        ),
        (
            Control("dd_prompt", "Prompt", "text", "The message to send."),
            Control("dd_system", "System", "text", "A system message (a new conversation only)."),
            Control("dd_response", "Response", "text", "The model's answer."),
            *COMMON,
        ),
        nuke_inputs=("src", "previous"),
    ),
    Node(
        "sequence_agent",
        "DD Sequence Agent",
        "Break a sequence down into a scene, characters and shots (the agentic route); "
        "Build Nodes makes image nodes for the scene and characters and a shot node per shot.",
        ("scene", "protagonist", "antagonist"),
        (
            Fields(
                "agentic",
                ("agentic",),
                exclude=frozenset(
                    {
                        "scene_reference_image",
                        "protagonist_reference_image",
                        "antagonist_reference_image",
                    }
                ),
                menus={"texts_model": "texts"},
            ),
        ),
        (
            *COMMON,
            Control(
                "dd_build", "Build Nodes", "button", "Build the nodes from the breakdown.", "build"
            ),
            Control("dd_response", "Breakdown", "text", "The breakdown (JSON)."),
        ),
    ),
    Node(
        "shot",
        "DD Shot",
        "A shot: an image from the prompt, styled by the scene, protagonist and antagonist "
        "references (IP-Adapters) and shaped by a depth ControlNet, then a video from it.",
        ("scene", "protagonist", "antagonist", "depth"),
        (
            Fields(
                "images",
                ("ImageRequest",),
                only=GENERATIVE_IMAGE,
                model_domain="images",
                model_modes=frozenset({"text_to_image"}),
            ),
            Fields(
                "videos",
                ("VideoRequest",),
                only=SHOT_VIDEO,
                prefix="video_",
                model_domain="videos",
                # the shot has a video prompt: a model that reads prompts by default
                default_modes=frozenset({"text_to_video"}),
            ),
        ),
        (*COMMON, OUTPUT),
        reads="video",
    ),
)


# --- the server's schema --------------------------------------------------------------


def server_schema() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The OpenAPI spec and GET /api/models of this checkout's server (nothing loaded)."""
    sys.path.insert(0, str(REPO))
    from fastapi.testclient import TestClient

    from api.domains import Settings
    from api.main import create_app

    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(
            data_dir=Path(scratch), models_dir=Path(scratch) / "models", allow_downloads=False
        )
        with TestClient(create_app(settings, devices=["cpu"])) as client:
            spec = client.get("/openapi.json").json()
            models = client.get("/api/models").json()
    return spec, models


class Schema:
    def __init__(self, spec: dict[str, Any], models: list[dict[str, Any]]) -> None:
        self.components = spec["components"]["schemas"]
        self.models = models
        route = spec["paths"]["/api/agentic/sequences"]["post"]
        self.agentic = self.resolve(route["requestBody"]["content"]["application/json"]["schema"])

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def request(self, name: str) -> dict[str, Any]:
        return self.agentic if name == "agentic" else self.components[name]

    def model_names(self, domain: str, modes: frozenset[str] | None = None) -> list[str]:
        return [
            m["name"]
            for m in self.models
            if m["domain"] == domain and (modes is None or modes & set(m["modes"]))
        ]

    def image_request_of(self, model: dict[str, Any]) -> str:
        return next(
            (IMAGE_TASK_SCHEMAS[mode] for mode in model["modes"] if mode in IMAGE_TASK_SCHEMAS),
            "ImageRequest",
        )


# --- the node spec ------------------------------------------------------------------------


def describe_field(schema: Schema, name: str, prop: dict[str, Any]) -> dict[str, Any]:
    """A request field as a parameter: its type, default, range, menu and 'unset' value."""
    options = [schema.resolve(o) for o in prop.get("anyOf", [prop])]
    optional = any(o.get("type") == "null" for o in options)
    value = next((o for o in options if o.get("type") != "null"), {})
    kind = value.get("type", "string")
    parm: dict[str, Any] = {"label": prop.get("title") or name.replace("_", " ").title()}
    description = prop.get("description") or value.get("description") or ""
    if "enum" in value:
        # Houdini menus hold strings; a menu of numbers (bit_depth) says so, to send numbers
        parm |= {"type": "menu", "menu": [str(item) for item in value["enum"]]}
        if kind == "integer":
            parm["menu_of"] = "int"
    elif kind == "boolean":
        parm["type"] = "bool"
    elif kind in ("integer", "number"):
        parm["type"] = "int" if kind == "integer" else "float"
        low = value.get("minimum", value.get("exclusiveMinimum"))
        high = value.get("maximum", value.get("exclusiveMaximum"))
        if optional:
            # Absent means "the model's default" (or random): a value the field can't take.
            zero_allowed = low is None or low < 0 or (low == 0 and "minimum" in value)
            parm["unset"] = -1 if zero_allowed else 0
            description = f"{description} {parm['unset']}: absent.".strip()
        parm["min"] = parm.get("unset", low) if low is not None else None
        parm["max"] = high if high is not None and high < 2**31 else 2**31 - 1
    elif kind == "array":
        parm["type"] = "json"
    elif name.endswith("_path") or name.endswith("_image"):
        parm["type"] = "path"
    elif name.endswith("prompt"):
        parm["type"] = "text"
    else:
        parm["type"] = "string"
    default = prop.get("default", value.get("default"))
    if default is None:
        default = parm.get("unset", {"bool": False, "int": 0, "float": 0.0}.get(parm["type"], ""))
    if parm["type"] == "json" and default == "":
        default = []
    if parm["type"] == "menu" and default is not None:
        default = str(default)
    parm["default"] = default
    if optional:
        parm["optional"] = True
    parm["help"] = description
    return parm


def node_parms(schema: Schema, node: Node) -> list[dict[str, Any]]:
    parms: list[dict[str, Any]] = []
    for group, fields in enumerate(node.fields):
        requests = [schema.request(name) for name in fields.schemas]
        merged: dict[str, dict[str, Any]] = {}
        for request in requests:
            for name, prop in request["properties"].items():
                merged.setdefault(name, prop)
        names = list(fields.only) if fields.only else [n for n in merged if n not in fields.exclude]
        models = (
            schema.model_names(fields.model_domain, fields.model_modes)
            if fields.model_domain
            else []
        )
        for name in names:
            parm: dict[str, Any] = {"name": fields.prefix + name, "field": name, "request": group}
            parm |= describe_field(schema, name, merged[name])
            menu_domain = fields.model_domain if name == "model" else fields.menus.get(name)
            if menu_domain is not None:
                menu = models if name == "model" else schema.model_names(menu_domain)
                preferred = menu
                if name == "model" and fields.default_modes:
                    preferred = schema.model_names(menu_domain, fields.default_modes) or menu
                default = parm["default"] if parm["default"] in menu else preferred[0]
                parm |= {"type": "menu", "menu": menu, "default": default}
            if fields.kind == "images" and name != "model":
                takes = [
                    m["name"]
                    for m in schema.models
                    if m["name"] in models
                    and name in schema.request(schema.image_request_of(m))["properties"]
                ]
                if takes != models:
                    parm["models"] = takes
                    parm["skip_models"] = [m for m in models if m not in takes]
            parms.append(parm)
    defaults = {
        "output_image_path": "$HIP/deferred_diffusion/$OS/$OS.$F4.png",
        "output_video_path": "$HIP/deferred_diffusion/$OS/$OS.mp4",
    }
    for parm in parms:
        if parm["field"] in defaults and parm["type"] == "path":
            parm["default"] = defaults[parm["field"]]
    return parms


def node_spec(schema: Schema) -> dict[str, Any]:
    nodes = {}
    for node in NODES:
        nodes[node.name] = {
            "label": node.label,
            "type": f"{NAMESPACE}::{node.name}",
            "inputs": list(node.inputs),
            "requests": [
                {"kind": f.kind, "prefix": f.prefix, "model_domain": f.model_domain}
                for f in node.fields
            ],
            "parms": node_parms(schema, node),
            "controls": [c.name for c in node.controls],
            "reads": node.reads,
            "nuke_inputs": list(node.nuke_inputs) if node.nuke_inputs else None,
        }
    adapters = {
        m["name"]: {
            "controlnets": sorted(m.get("controlnets") or {}),
            "ip_adapters": sorted(m.get("ip_adapters") or {}),
        }
        for m in schema.models
        if m["domain"] == "images"
    }
    return {
        "generated_by": "hda/build.py from the server's OpenAPI spec and GET /api/models",
        "nodes": nodes,
        "image_adapters": adapters,  # the ControlNet and IP-Adapter kinds each model takes
    }


# --- Houdini: the expanded HDA ------------------------------------------------------------


def section_name(name: str) -> str:
    """A section's file name in an expanded HDA: '_' doubled, '::' and '/' coded."""
    return name.replace("_", "__").replace(":", "_8").replace("/", "_1")


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def dialog_parm(parm: dict[str, Any], indent: str = "    ") -> list[str]:
    kinds = {"int": "integer", "float": "float", "bool": "toggle", "path": "file"}
    kind = kinds.get(parm["type"], "string")
    default = parm["default"]
    if parm["type"] == "bool":
        default = "1" if default else "0"
    elif parm["type"] == "json":
        default = json.dumps(default)
    elif parm["type"] in ("int", "float"):
        default = number(default)
    lines = [
        "parm {",
        f"    name    {quote(parm['name'])}",
        f"    label   {quote(parm['label'])}",
        f"    type    {kind}",
        f"    default {{ {quote(str(default))} }}",
    ]
    if parm.get("skip_models"):  # hidden for the models that don't take it
        model = parm.get("model_parm", "model")
        hide = " ".join(f"{{ {model} == {quote(m)} }}" for m in parm["skip_models"])
        lines.append(f"    hidewhen {quote(hide)}")
    if parm["type"] == "menu":
        lines.append("    menu {")
        lines += [f"        {quote(item)}\t{quote(item)}" for item in parm["menu"]]
        lines.append("    }")
    if parm["type"] in ("int", "float") and parm.get("min") is not None:
        lines.append(f"    range   {{ {number(parm['min'])} {number(min(parm['max'], 10_000))} }}")
    if parm.get("help"):
        lines.append(f"    help    {quote(parm['help'])}")
    if parm["type"] in ("text", "json"):
        lines += ['    parmtag { "editor" "1" }', '    parmtag { "editorlines" "3-12" }']
    if parm["type"] == "path":
        mode = "write" if parm["field"].startswith("output") else "read"
        lines.append(f'    parmtag {{ "filechooser_mode" "{mode}" }}')
    lines += ['    parmtag { "script_callback_language" "python" }', "}"]
    return [indent + line for line in lines]


def dialog_control(control: Control) -> list[str]:
    kind = {"text": "string", "label": "label"}.get(control.type, control.type)
    lines = [
        "parm {",
        f"    name    {quote(control.name)}",
        f"    label   {quote(control.label)}",
        f"    type    {kind}",
    ]
    if control.type == "button" and control.name == "dd_update":
        lines.append("    joinnext")
    lines.append('    default { "" }' if control.type != "button" else '    default { "0" }')
    if control.help:
        lines.append(f"    help    {quote(control.help)}")
    if control.type == "text":
        lines += ['    parmtag { "editor" "1" }', '    parmtag { "editorlines" "3-20" }']
    if control.callback:
        call = f"hou.phm().{control.callback}(kwargs)"
        lines.append(f'    parmtag {{ "script_callback" {quote(call)} }}')
    lines += ['    parmtag { "script_callback_language" "python" }', "}"]
    return ["    " + line for line in lines]


def dialog_script(node: Node, spec: dict[str, Any]) -> str:
    full = f"{NAMESPACE}::{node.name}"
    lines = [
        f"# Dialog script for {full} automatically generated",
        "",
        "{",
        f"    name\t{full}",
        f"    script\t{full}",
        f"    label\t{quote(node.label)}",
        "",
    ]
    lines += [f"    input\tinput{i + 1}\t{name}" for i, name in enumerate(node.inputs)]
    lines.append("    output\toutput1\toutput1")
    rgba = " ".join("RGBA" for _ in node.inputs)
    lines += [f"    signature\tdefault\tDefault\t{{ {rgba} }}\t{{ RGBA }}", ""]
    lines += ["    help {", f"\t{quote(node.help)}", "    }", ""]
    parms = spec["parms"]
    controls = {c.name: c for c in node.controls}
    for control in node.controls:
        if control.type == "button" or control.name in ("dd_status", "dd_job_id"):
            lines += dialog_control(control)
    prefix_groups: dict[str, list[dict[str, Any]]] = {}
    for parm in parms:
        prefix = spec["requests"][parm["request"]]["prefix"]
        prefix_groups.setdefault(prefix, []).append(parm)
    for prefix, group in prefix_groups.items():
        folder = prefix.rstrip("_") or "request"
        lines += [
            "    groupsimple {",
            f"        name    {quote('dd_' + folder)}",
            f"        label   {quote(folder.title() if prefix else 'Request')}",
            "",
        ]
        for parm in group:
            if prefix:
                parm = parm | {"model_parm": prefix + "model"}
            lines += dialog_parm(parm, "        ")
        lines += ["    }", ""]
    for name, control in controls.items():
        if not (control.type == "button" or name in ("dd_status", "dd_job_id")):
            lines += dialog_control(control)
    lines += ["}", ""]
    return "\n".join(lines)


def create_script(node: Node) -> str:
    full = f"{NAMESPACE}::{node.name}"
    return (
        "# Automatically generated script\n"
        "\\set noalias = 1\n"
        "#\n"
        f"#  Creation script for {full} operator\n"
        "#\n"
        "\n"
        'if ( "$arg1" == "" ) then\n'
        "    echo This script is intended as a creation script\n"
        "    exit\n"
        "endif\n"
        "\n"
        f"# Node $arg1 ({NAMESPACE}::Cop/{node.name})\n"
        "opexprlanguage -s hscript $arg1\n"
        "opuserdata -n '___Version___' -v '' $arg1\n"
    )


TYPE_PROPERTIES = "".join(
    f"{key} := {value};\n"
    for key, value in (
        ("CheckExternal", 1),
        ("ContentsCompressionType", 1),
        ("ForbidOutsideParms", 1),
        ("GzipContents", 1),
        ("LockContents", 1),
        ("MakeDefault", 1),
        ("ParmsFromVfl", 0),
        ("PrefixDroppedParmLabel", 0),
        ("PrefixDroppedParmName", 0),
        ("SaveCachedCode", 0),
        ("SaveIcon", 1),
        ("SaveSpareParms", 0),
        ("UnlockOnCreate", 0),
        ("UseDSParms", 1),
    )
)


def options_json(entries: dict[str, tuple[str, Any]]) -> str:
    """Houdini's option file: {"name": {"type": ..., "value": ...}}, tab-indented."""
    lines = ["{"]
    items = list(entries.items())
    for i, (name, (kind, value)) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines += [
            f'\t"{name}":{{',
            f'\t\t"type":"{kind}",',
            f'\t\t"value":{json.dumps(value, separators=(",", ":"))}',
            f"\t}}{comma}",
        ]
    return "\n".join(lines + ["}"]) + "\n"


EXTRA_FILE_OPTIONS = options_json(
    {
        "PythonModule/Cursor": ("intarray", [1, 1]),
        "PythonModule/IsExpr": ("bool", False),
        "PythonModule/IsPython": ("bool", True),
        "PythonModule/IsScript": ("bool", True),
        "PythonModule/Source": ("string", ""),
    }
)
INTERNAL_FILE_OPTIONS = options_json(
    {"nodeconntype": ("bool", False), "nodeparmtype": ("bool", False)}
)


TOOLS_SHELF = """<?xml version="1.0" encoding="UTF-8"?>
<shelfDocument>
  <!-- This file contains definitions of shelves, toolbars, and tools.
 It should not be hand-edited when it is being used by the application.
 Note, that two definitions of the same element are not allowed in
 a single file. -->

  <tool name="$HDA_DEFAULT_TOOL" label="$HDA_LABEL" icon="$HDA_ICON">
    <toolMenuContext name="viewer">
      <contextNetType>COP</contextNetType>
    </toolMenuContext>
    <toolMenuContext name="network">
      <contextOpType>$HDA_TABLE_AND_NAME</contextOpType>
    </toolMenuContext>
    <toolSubmenu>Deferred Diffusion</toolSubmenu>
    <script scriptType="python"><![CDATA[import coptoolutils

coptoolutils.genericTool(kwargs, '$HDA_NAME')]]></script>
  </tool>
</shelfDocument>
"""


def python_module(node: Node) -> str:
    calls = [c.callback for c in node.controls if c.callback]
    lines = [
        f'"""{NAMESPACE}::{node.name}: the logic lives in the deferred_diffusion package',
        '(hda/python/deferred_diffusion/houdini.py); this module only calls it."""',
        "",
        "from deferred_diffusion import houdini",
        "",
    ]
    for call in calls:
        lines += ["", f"def {call}(kwargs):", f'    houdini.{call}(kwargs["node"])', ""]
    return "\n".join(lines)


def help_page(node: Node, spec: dict[str, Any]) -> str:
    lines = [
        f"= {node.label} =",
        "",
        f"#type: node\n#context: cop\n#internal: {NAMESPACE}::{node.name}",
        "",
        f'"""{node.help}"""',
        "",
        "Parameters are named as the request fields they fill; see the server's /docs.",
        "",
        "@inputs",
        "",
    ]
    lines += [f"{name}:\n    #id: input{i + 1}\n" for i, name in enumerate(node.inputs)]
    lines += ["@parameters", ""]
    for parm in spec["parms"]:
        lines += [
            f"{parm['label']}:",
            f"    #id: {parm['name']}",
            f"    {parm['help'] or parm['field']}",
            "",
        ]
    return "\n".join(lines)


def mime(parts: list[tuple[str, str]]) -> str:
    out = [
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"',
        "",
    ]
    for name, body in parts:
        out += [
            f"--{BOUNDARY}",
            f'Content-Disposition: attachment; filename="{name}"',
            "Content-Type: text/plain",
            "",
            body,
        ]
    return "\n".join(out + [f"--{BOUNDARY}--", ""])


def node_def(
    position: str, outputs: list[str], inputs: list[tuple[str, int, str]], display: bool
) -> str:
    flag = "on" if display else "off"
    named_out = "".join(f'{i} "{name}"\n' for i, name in enumerate(outputs))
    named_in = "".join(
        f'{i} \t{src} {conn} 1 "{label}"\n' for i, (src, conn, label) in enumerate(inputs)
    )
    plain_in = "".join(f"{i} \t{src} 0 1\n" for i, (src, _, _) in enumerate(inputs))
    return (
        'comment ""\n'
        f"position {position}\n"
        f"connectornextid {len(outputs) + len(inputs)}\n"
        "flags =  lock off model off template off footprint off xray off bypass off "
        f"display {flag} render {flag} highlight off unload off savedata off compress off "
        "colordefault on exposed on lowdetail off mediumdetail off highdetail on\n"
        f"outputsNamed3\n{{\n{named_out}}}\n"
        f"inputsNamed3\n{{\n{named_in}}}\n"
        f"inputs\n{{\n{plain_in}}}\n"
        "stat\n{\n  create -1\n  modify -1\n  author deferred-diffusion\n  access 0777\n}\n"
        "color UT_Color RGB 0.8 0.8 0.8 \n"
        'delscript ""\n'
        "exprlanguage hscript\n"
        "end\n"
    )


VERSION_USERDATA = '{\n\t"___Version___":{\n\t\t"type":"string",\n\t\t"value":"%s"\n\t}\n}\n'


def contents_mime(node: Node) -> str:
    """The network inside: a file COP showing dd_output, or the first input passed through."""
    full = f"{NAMESPACE}::{node.name}"
    parts = [
        ("node_type", "Cop\n"),
        ("hdaroot.init", f"type = {full}\nmatchesdef = 0\n"),
        ("hdaroot.def", node_def("0 0", [], [], True)),
        ("hdaroot.userdata", VERSION_USERDATA % ""),
    ]
    if node.reads:
        source = "file1"
        channel = (
            "{\n    channel filename {\n      lefttype = extend\n      righttype = extend\n"
            '      defaultString = \\"\\"\n      flags = 0\n'
            '      segment { length = 0 expr = chs(\\"../dd_output\\") }\n    }\n  }\n'
        )
        parts += [
            ("hdaroot/file1.init", "type = file\nmatchesdef = 1\n"),
            ("hdaroot/file1.def", node_def("0 2", ["C"], [], False)),
            ("hdaroot/file1.chn", channel),
            (
                "hdaroot/file1.parm",
                '{\nversion 0.8\nsource\t[ 0\tlocks=0 ]\t(\t"file"\t)\n'
                "filename\t[ 0\tlocks=0 ]\t(\t[ filename\t0 ] \t)\n}\n",
            ),
            ("hdaroot/file1.userdata", VERSION_USERDATA % "___EXTERNAL___"),
        ]
    else:
        source = "input1"
        outputs = [f"output{i + 1}" for i in range(len(node.inputs))]
        parts += [
            ("hdaroot/input1.init", "type = input\nmatchesdef = 1\n"),
            ("hdaroot/input1.def", node_def("0 2", outputs, [], False)),
            ("hdaroot/input1.parm", "{\nversion 0.8\n}\n"),
            ("hdaroot/input1.userdata", VERSION_USERDATA % "___EXTERNAL___"),
        ]
    parts += [
        ("hdaroot/output1.init", "type = output\nmatchesdef = 1\n"),
        ("hdaroot/output1.def", node_def("0 0", [], [(source, 0, "input1")], True)),
        ("hdaroot/output1.parm", "{\nversion 0.8\n}\n"),
        ("hdaroot/output1.userdata", VERSION_USERDATA % "___EXTERNAL___"),
        ("hdaroot.order", f"2\n{source}\noutput1\n"),
        ("hdaroot.net", "1\n"),
    ]
    return mime(parts)


def sections_list(entries: list[tuple[str, str]]) -> str:
    return '""\n' + "".join(f"{file}\t{name}\n" for file, name in entries)


def hda_files(node: Node, spec: dict[str, Any]) -> dict[str, str]:
    """The expanded HDA of one node: relative path -> text."""
    operator = f"{NAMESPACE}::Cop/{node.name}"
    folder = section_name(operator)
    sections = {
        "DialogScript": dialog_script(node, spec),
        "CreateScript": create_script(node),
        "InternalFileOptions": INTERNAL_FILE_OPTIONS,
        "Contents.gz": None,
        "TypePropertiesOptions": TYPE_PROPERTIES,
        "Help": help_page(node, spec),
        "Tools.shelf": TOOLS_SHELF,
        "PythonModule": python_module(node),
        "ExtraFileOptions": EXTRA_FILE_OPTIONS,
    }
    files = {
        "houdini.hdalibrary": "",
        "Sections.list": sections_list(
            [
                ("INDEX__SECTION", "INDEX_SECTION"),
                ("houdini.hdalibrary", "houdini.hdalibrary"),
                (folder, operator),
            ]
        ),
        "INDEX__SECTION": (
            f"Operator:     {NAMESPACE}::{node.name}\n"
            f"Label:        {node.label}\n"
            f"Path:         oplib:/{operator}?{operator}\n"
            "Icon:         MISC_python\n"
            "Table:        Cop\n"
            "License:      \n"
            "Extra:        \n"
            "User:         \n"
            f"Inputs:       0 to {len(node.inputs)}\n"
            "Subnet:       true\n"
            "Python:       false\n"
            "Empty:        false\n"
            f"Modified:     {MODIFIED}\n"
            "\n"
        ),
        f"{folder}/Sections.list": sections_list([(name, name) for name in sections]),
        f"{folder}/Contents.dir/Sections.list": sections_list([("Contents.mime", "Contents.mime")]),
        f"{folder}/Contents.dir/Contents.mime": contents_mime(node),
    }
    for name, text in sections.items():
        if text is not None:
            files[f"{folder}/{name}"] = text
    return files


# --- Nuke: the gizmos ---------------------------------------------------------------------


def tcl(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("[", "\\[").replace("]", "\\]")
    return (
        '"'
        + escaped.replace("\n", "\\n").replace("$", "\\$").replace("{", "\\{").replace("}", "\\}")
        + '"'
    )


def nuke_default(parm: dict[str, Any]) -> str | None:
    """A knob's value in the gizmo, None where the knob's own default is it."""
    default = parm["default"]
    if parm["type"] == "menu":
        return None if default == parm["menu"][0] else str(default)
    if parm["type"] == "bool":
        return "true" if default else None
    if parm["type"] == "json":
        return json.dumps(default)
    if parm["type"] in ("int", "float"):
        return number(default) if default else None
    # Houdini's $HIP/$OS/$F4 in Nuke's words: the script's folder, the node, the frame.
    for houdini, nuke in (
        ("$HIP", "[file dirname [value root.name]]"),
        ("$OS", "[value this.name]"),
        ("$F4", "####"),
    ):
        default = default.replace(houdini, nuke)
    return default or None


def gizmo(node: Node, spec: dict[str, Any]) -> str:
    """A Nuke gizmo (text): one knob per parameter, named as its request field."""
    inputs = node.nuke_inputs or ()
    knobs = {"int": 3, "float": 7, "bool": 6, "path": 2, "menu": 4, "text": 43, "json": 43}
    lines = [
        "#! deferred-diffusion gizmo, generated by hda/build.py",
        "version 14.0",
        "Gizmo {",
        f" inputs {len(inputs)}",
        f" help {tcl(node.help)}",
        " tile_color 0x5c3d99ff",
        ' addUserKnob {20 deferred_diffusion l "Deferred Diffusion"}',
    ]
    values: list[str] = []
    script = "import deferred_diffusion.nuke\\ndeferred_diffusion.nuke.{}(nuke.thisNode())"
    lines.append(f' addUserKnob {{22 dd_update l Update T "{script.format("update")}" +STARTLINE}}')
    lines.append(f' addUserKnob {{22 dd_cancel l Cancel -STARTLINE T "{script.format("cancel")}"}}')
    lines.append(" addUserKnob {1 dd_status l Status}")
    lines.append(" addUserKnob {1 dd_job_id l Job}")
    if node.reads:
        lines.append(" addUserKnob {2 dd_output l Output}")
    for control in node.controls:
        if control.type == "text":
            lines.append(f" addUserKnob {{43 {control.name} l {tcl(control.label)}}}")
    for parm in spec["parms"]:
        code = knobs.get(parm["type"], 1)
        extra = ""
        if parm["type"] == "menu":
            extra = " M {" + " ".join(tcl(item) for item in parm["menu"]) + "}"
        elif parm["type"] in ("int", "float") and parm.get("min") is not None:
            extra = f" R {number(parm['min'])} {number(min(parm['max'], 10_000))}"
        if parm["type"] == "bool":
            extra += " +STARTLINE"
        help_text = f" t {tcl(parm['help'])}" if parm.get("help") else ""
        lines.append(
            f" addUserKnob {{{code} {parm['name']} l {tcl(parm['label'])}{help_text}{extra}}}"
        )
        default = nuke_default(parm)
        if default is not None:
            values.append(f" {parm['name']} {tcl(default)}")
    lines += values
    lines.append("}")
    for i, name in reversed(list(enumerate(inputs))):
        number_line = f"  number {i}\n" if i else ""
        lines.append(f" Input {{\n  inputs 0\n  name {name}\n{number_line}  xpos {i * 110}\n }}")
    if node.reads:
        lines.append(
            ' Read {\n  inputs 0\n  file "\\[value parent.dd_output]"\n  on_error black\n'
            "  reload 0\n  name Read1\n  xpos 0\n  ypos 120\n }"
        )
        lines.append(" Output {\n  name Output1\n  xpos 0\n  ypos 240\n }")
    else:  # the first input passed through: the last one on the stack
        lines.append(" Output {\n  name Output1\n  xpos 0\n  ypos 240\n }")
    lines.append("end_group")
    return "\n".join(lines) + "\n"


# --- all of it ----------------------------------------------------------------------------


def generate(
    spec: dict[str, Any] | None = None, models: list[dict[str, Any]] | None = None
) -> dict[Path, str]:
    """Every generated file (path -> text), from the server's spec and models."""
    if spec is None or models is None:
        spec, models = server_schema()
    schema = Schema(spec, models)
    nodes = node_spec(schema)
    files = {SPEC: json.dumps(nodes, indent=2) + "\n"}
    for node in NODES:
        for relative, text in hda_files(node, nodes["nodes"][node.name]).items():
            files[OTLS / f"{node.name}.hda" / relative] = text
        if node.nuke_inputs:
            files[NUKE / f"DeferredDiffusion{node.name.title()}.gizmo"] = gizmo(
                node, nodes["nodes"][node.name]
            )
    return files


def generated_now() -> set[Path]:
    """The generated files on disk (to find stale ones)."""
    found = {path for path in OTLS.rglob("*") if path.is_file()} if OTLS.exists() else set()
    found |= set(NUKE.glob("DeferredDiffusion*.gizmo"))
    if SPEC.exists():
        found.add(SPEC)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    files = generate()
    stale = generated_now() - set(files)
    changed = sorted(
        [p for p, text in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
        + sorted(stale)
    )
    if args.check:
        for path in changed:
            print(f"out of date: {path.relative_to(REPO)}", file=sys.stderr)
        return 1 if changed else 0
    for path in stale:
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as file:
            file.write(text)
    print(f"{len(files)} files generated, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
