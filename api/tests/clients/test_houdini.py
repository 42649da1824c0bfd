"""The HDAs' logic (deferred_diffusion.houdini) on a small fake of ``hou``: requests built
from parameters and upstream nodes, frame ranges, text chaining, the sequence agent's
nodes, the shot's two jobs; and Update, Cancel and the reload against the real server."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deferred_diffusion import Client, houdini
from deferred_diffusion.nodes import breakdown_nodes, frames, request_from_values
from PIL import Image

from api.tests.clients.conftest import wait_for
from api.tests.clients.fake_hou import FakeHou, write_picture
from api.tests.common.test_server_process import Server


@pytest.fixture
def hou(tmp_path: Path, server_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHou]:
    """$HIP inside the server's allowed root: the inputs it writes are the server's to read."""
    fake = FakeHou(server_root / tmp_path.name / "hip")
    monkeypatch.setitem(sys.modules, "hou", fake)
    yield fake
    houdini.RUNS.clear()


def test_parameters_become_the_request_fields(hou: FakeHou):
    node = hou.asset("image", "img1")
    request = houdini.image_request(node)
    # Unset numbers (-1 / 0) are left out: the server's defaults apply.
    assert request == {
        "model": "sd1.5",
        "output_image_path": str(hou.hip / "deferred_diffusion/img1/img1.0001.png"),
        "prompt": "",
        "negative_prompt": "",
        "strength": 0.5,
        "inpainting_full_image": True,
        "optimize_low_vram": False,
        "loras": [],
        "num_images": 1,
        "bit_depth": 8,
        "priority": 0,
    }
    node.parm("loras").set('[{"name": "tiny-sd15", "scale": 0.5}]')  # a JSON parameter
    assert houdini.image_request(node)["loras"] == [{"name": "tiny-sd15", "scale": 0.5}]
    node.parm("loras").set("[]")
    node.parm("seed").set(7)
    node.parm("max_width").set(64)
    node.parm("guidance_scale").set(0.0)  # 0 is a guidance (flux), not "unset"
    node.parm("model").set("depth-anything")
    node.parm("depth_format").set("png16")
    # A task model: only the fields its request has.
    assert houdini.image_request(node) == {
        "model": "depth-anything",
        "output_image_path": str(hou.hip / "deferred_diffusion/img1/img1.0001.png"),
        "depth_format": "png16",
        "priority": 0,
    }
    node.parm("model").set("sdxl")
    node.parm("bit_depth").set("16")  # a menu of numbers sends a number
    assert {
        "seed": 7,
        "max_width": 64,
        "guidance_scale": 0.0,
        "bit_depth": 16,
    }.items() <= houdini.image_request(node).items()


def test_inputs_and_upstream_adapters(hou: FakeHou, tmp_path: Path):
    plate = hou.cop("plate", write_picture(tmp_path / "plate.png"))
    matte = hou.cop("matte", write_picture(tmp_path / "matte.png", grey=255))
    depth = hou.cop("depth", write_picture(tmp_path / "depth.png", grey=60))
    face = hou.cop("face", write_picture(tmp_path / "face.png", grey=200))
    control = hou.asset("control_net", "cn1", model="depth", conditioning_scale=0.7)
    control.setInput(0, depth)
    adapter = hou.asset("ip_adapter", "ip1", model="face", scale=0.4, scale_layers="style")
    adapter.setInput(0, face)
    adapter.setInput(1, matte)
    image = hou.asset("image", "img1", model="sdxl")
    image.setInput(0, plate)
    image.setInput(1, matte)
    image.setInput(2, control)
    image.setInput(5, adapter)
    hou.setFrame(12)

    request = houdini.image_request(image)
    folder = hou.hip / "deferred_diffusion"
    assert request["input_image_path"] == str(folder / "img1/inputs/src.0012.png")
    assert request["input_mask_path"] == str(folder / "img1/inputs/mask.0012.png")
    assert request["controlnets"] == [
        {
            "model": "depth",
            "conditioning_scale": 0.7,
            "preprocess": False,
            "image_path": str(folder / "cn1/inputs/src.0012.png"),
        }
    ]
    assert request["ip_adapters"] == [
        {
            "model": "face",
            "scale": 0.4,
            "scale_layers": "style",
            "image_path": str(folder / "ip1/inputs/src.0012.png"),
            "mask_path": str(folder / "ip1/inputs/mask.0012.png"),
        }
    ]
    # Each input rendered once, at the frame, by a ROP that was then removed.
    assert sorted(path for path, _, frame in hou.renders if frame == 12) == [
        "/obj/copnet1/depth",
        "/obj/copnet1/face",
        "/obj/copnet1/matte",
        "/obj/copnet1/matte",
        "/obj/copnet1/plate",
    ]
    assert (
        Path(request["controlnets"][0]["image_path"]).read_bytes()
        == (tmp_path / "depth.png").read_bytes()
    )
    assert not [n for n in hou.copnet.children if n.startswith("dd_write")]

    control.setInput(0, None)
    with pytest.raises(Exception, match="cn1: wire the control image into its src input"):
        houdini.image_request(image)


def test_a_frame_range_is_one_request_per_frame(hou: FakeHou, tmp_path: Path):
    image = hou.asset("image", "img1")
    image.setInput(0, hou.cop("plate", write_picture(tmp_path / "plate.png")))
    hou.setFrame(5)
    requests = houdini.frame_range_requests(image, 1001, 1003)
    assert [kind for kind, _ in requests] == ["images"] * 3
    assert [Path(r["output_image_path"]).name for _, r in requests] == [
        "img1.1001.png",
        "img1.1002.png",
        "img1.1003.png",
    ]
    assert [Path(r["input_image_path"]).name for _, r in requests] == [
        "src.1001.png",
        "src.1002.png",
        "src.1003.png",
    ]
    assert hou.frame() == 5  # the frame is put back
    assert frames(1, 10, 3) == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="empty"):
        frames(10, 1)

    # With the UI: a progress window while the inputs are written; Esc stops it.
    hou.ui_available, hou.interrupt_at = True, 0.5
    with pytest.raises(Exception, match=r"stopped while writing the inputs \(Esc\)"):
        houdini.frame_range_requests(image, 1, 4)
    assert hou.progress == [0, 0.25, 0.5] and hou.frame() == 5
    hou.ui_available = False

    image.parm("output_image_path").set("$HIP/still.png")
    houdini.update_frame_range(image)
    assert image.parm("dd_status").eval().startswith("error: client_error (output_image_path)")


def test_text_nodes_chain_their_conversation(hou: FakeHou, tmp_path: Path):
    first = hou.asset("text", "ask", dd_prompt="What is in the picture?", dd_system="Be brief.")
    first.setInput(0, hou.cop("plate", write_picture(tmp_path / "plate.png")))
    request = houdini.text_request(first)
    assert request["model"] == "qwen-2.5-vl"
    image = str(hou.hip / "deferred_diffusion/ask/inputs/src.0001.png")
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": "What is in the picture?"},
            ],
        },
    ]
    assert "temperature" not in request and "seed" not in request  # unset: the model's
    second = hou.asset("text", "follow", dd_prompt="And its colour?")
    second.setInput(1, first)
    with pytest.raises(Exception, match="ask: update it first"):
        houdini.text_request(second)
    history = request["messages"] + [{"role": "assistant", "content": "A plate."}]
    first.parm("messages").set(json.dumps(history))
    assert houdini.text_request(second)["messages"] == history + [
        {"role": "user", "content": "And its colour?"}
    ]


BREAKDOWN: dict[str, Any] = {
    "scene": {
        "name": "Harbour at dusk",
        "image_prompt": "a harbour at dusk, cinematic, 35mm",
        "diffusion_positive_prompt_tags": "cinematic, 35mm",
    },
    "protagonist": {"name": "Ana", "image_prompt": "a sailor in a yellow coat"},
    "antagonist": None,
    "shots": [
        {
            "name": "Sh010 wide",
            "protagonist": {"action": "walks"},
            "antagonist": None,
            "image_prompt": "wide shot of the harbour, cinematic, 35mm",
            "video_prompt": "slow push in",
        },
        {
            "name": "sh020",
            "protagonist": None,
            "antagonist": None,
            "image_prompt": "boats",
            "video_prompt": "boats rocking",
        },
    ],
    "usage": {},
}


def test_the_sequence_agent_builds_image_and_shot_nodes(hou: FakeHou, tmp_path: Path):
    agent = hou.asset("sequence_agent", "seq", prompt="A sailor comes home.")
    agent.setInput(0, hou.cop("plate", write_picture(tmp_path / "plate.png")))
    request = houdini.sequence_request(agent)
    assert request["prompt"] == "A sailor comes home."
    assert request["scene_reference_image"].endswith("seq/inputs/scene.0001.png")
    assert "protagonist_reference_image" not in request
    assert "refinement_prompt" not in request and "model" not in request  # empty: server's

    agent.parm("dd_response").set(json.dumps(BREAKDOWN))
    made = houdini.build(agent)
    names = [node.name() for node in made]
    assert names == [
        "seq_scene_harbour_at_dusk",
        "seq_protagonist_ana",
        "seq_shot_sh010_wide",
        "seq_shot_sh020",
    ]
    scene, ana, wide, boats = made
    assert [n.type().name() for n in made] == ["deferred_diffusion::image"] * 2 + [
        "deferred_diffusion::shot"
    ] * 2
    assert scene.parm("prompt").eval() == "a harbour at dusk, cinematic, 35mm"
    assert wide.parm("prompt").eval() == "wide shot of the harbour, cinematic, 35mm"
    assert wide.parm("video_prompt").eval() == "slow push in"
    assert wide.inputs()[:2] == [scene, ana]
    assert boats.inputs() == [scene]
    # Building again reuses the nodes.
    assert [n.name() for n in houdini.build(agent)] == names
    assert len([n for n in hou.copnet.children if n.startswith("seq_")]) == 4
    assert breakdown_nodes(BREAKDOWN, "x")[2]["inputs"] == {
        0: "x_scene_harbour_at_dusk",
        1: "x_protagonist_ana",
    }


def test_the_shot_makes_an_image_then_a_video_from_it(hou: FakeHou, tmp_path: Path):
    shot = hou.asset("shot", "sh010", model="sdxl", prompt="a harbour", video_prompt="push in")
    shot.parm("video_num_frames").set(9)
    for index, name in enumerate(("scene", "protagonist", "antagonist", "depth")):
        shot.setInput(
            index, hou.cop(name, write_picture(tmp_path / f"{name}.png", grey=40 * index))
        )
    image, follow_up = houdini.shot_requests(shot)
    assert [(a["model"], Path(a["image_path"]).name) for a in image["ip_adapters"]] == [
        ("style", "scene.0001.png"),
        ("style-plus", "protagonist.0001.png"),
        ("style-plus", "antagonist.0001.png"),
    ]
    assert image["controlnets"] == [
        {
            "model": "depth",
            "image_path": str(hou.hip / "deferred_diffusion/sh010/inputs/depth.0001.png"),
        }
    ]
    assert image["prompt"] == "a harbour" and "video_prompt" not in image
    done = [{"result": {"images": [{"path": "/show/sh010/still.png"}]}}]
    [(kind, video)] = follow_up(done)
    assert kind == "videos"
    assert video["input_image_path"] == "/show/sh010/still.png"
    assert video["prompt"] == "push in" and video["num_frames"] == 9
    assert video["model"] == shot.parm("video_model").eval()
    # A model without IP-Adapters (flux) gets the depth ControlNet only.
    shot.parm("model").set("flux-schnell")
    image, _ = houdini.shot_requests(shot)
    assert "ip_adapters" not in image and image["controlnets"][0]["model"] == "depth"


def test_values_are_typed_by_the_spec():
    values = {"model": "canny", "conditioning_scale": "1.5", "preprocess": 1}
    body = request_from_values("control_net", values.__getitem__)
    assert body == {"model": "canny", "conditioning_scale": 1.5, "preprocess": True}


# --- against the real server --------------------------------------------------------------

SMALL: dict[str, Any] = {
    "model": "sd1.5",
    "num_inference_steps": 2,
    "max_width": 64,
    "max_height": 64,
    "seed": 3,
}


def small_image(hou: FakeHou, name: str, output: str, **values: Any) -> Any:
    return hou.asset("image", name, **(SMALL | {"output_image_path": output} | values))


def test_update_runs_the_job_and_reloads_the_output(
    hou: FakeHou, server: Server, server_root: Path, tmp_path: Path
):
    image = small_image(hou, "img1", f"{server_root}/hou/$OS.$F4.png", prompt="a lighthouse")
    image.setInput(0, hou.cop("plate", write_picture(tmp_path / "plate.png", (64, 48))))
    with Client(server.url) as client:
        houdini.update(image, client)  # no UI: runs here
    assert image.parm("dd_status").eval().startswith("done: 1 job(s)"), image.parm(
        "dd_status"
    ).eval()
    assert image.parm("dd_output").eval() == f"{server_root}/hou/img1.0001.png"
    with Image.open(image.parm("dd_output").eval()) as picture:
        assert picture.size == (64, 48)  # image to image: the plate's aspect
    assert image.node("file1").parm("reload").pressed == 1
    assert image.parm("dd_job_id").eval()
    assert image.color == (0.2, 0.6, 0.2)

    image.parm("model").set("sdxl-refiner")  # can't do text to image
    image.setInput(0, None)
    with Client(server.url) as client:
        houdini.update(image, client)
    status = image.parm("dd_status").eval()
    assert status.startswith("error: invalid_field (model)"), status
    assert hou.messages == []  # no UI: printed, not a dialog


def test_a_frame_range_runs_and_downloads_without_an_output_path(
    hou: FakeHou, server: Server, server_root: Path
):
    image = small_image(hou, "seq1", f"{server_root}/range/$OS.$F4.png")
    hou.frame_range = (1.0, 2.0)
    with Client(server.url) as client:
        houdini.update_frame_range(image, client)
    assert image.parm("dd_status").eval().startswith("done: 2 job(s)")
    assert sorted(p.name for p in (server_root / "range").glob("*.png")) == [
        "seq1.0001.png",
        "seq1.0002.png",
    ]
    assert image.parm("dd_output").unexpandedString() == f"{server_root}/range/$OS.$F4.png"

    loose = small_image(hou, "loose", "")
    with Client(server.url) as client:
        houdini.update(loose, client)
    local = Path(loose.parm("dd_output").eval())
    assert local.parent == hou.hip / "deferred_diffusion/loose/outputs" and local.is_file()


def test_the_ui_stays_free_and_cancel_stops_the_job(
    hou: FakeHou, server: Server, monkeypatch: pytest.MonkeyPatch
):
    hou.ui_available = True
    monkeypatch.setitem(
        sys.modules, "hdefereval", types.SimpleNamespace(executeDeferred=lambda f: f())
    )
    image = small_image(hou, "slow", "", num_inference_steps=500, max_width=256, max_height=256)
    client = Client(server.url)
    houdini.update(image, client)  # returns at once: the job runs in a thread
    assert "/obj/copnet1/slow" in houdini.RUNS
    wait_for(
        lambda: (
            " 1/" in image.parm("dd_status").eval() or "running" in image.parm("dd_status").eval()
        ),
        "progress",
    )
    assert any("slow: running" in line for line in hou.status)  # the status bar
    houdini.cancel(image)
    wait_for(lambda: "/obj/copnet1/slow" not in houdini.RUNS, "the run to end")
    assert image.parm("dd_status").eval().startswith("error: cancelled")
    assert client.get(image.parm("dd_job_id").eval())["status"] == "cancelled"
    assert hou.messages and "cancelled" in hou.messages[0]  # a dialog, with the UI
    client.close()


def test_a_text_node_keeps_the_conversation(hou: FakeHou, server: Server):
    text = hou.asset("text", "ask", dd_prompt="Say hello.", max_tokens=4, seed=1, temperature=0.0)
    with Client(server.url) as client:
        houdini.update(text, client)
    assert text.parm("dd_status").eval().startswith("done"), text.parm("dd_status").eval()
    messages = json.loads(text.parm("messages").eval())
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[-1]["content"] == text.parm("dd_response").eval()


def test_the_sequence_agent_asks_the_server_and_builds_the_nodes(
    hou: FakeHou, server: Server, tmp_path: Path
):
    """The agent on the server (its LLM a fake speaking OpenAI's API, the reference described
    by the tiny texts model); the breakdown lands in the node and the nodes are built."""
    agent = hou.asset("sequence_agent", "seq", prompt="A keeper guards a lighthouse.")
    agent.parm("model").set("openai:gpt-4o-mini")
    agent.setInput(0, hou.cop("plate", write_picture(tmp_path / "plate.png")))
    with Client(server.url) as client:
        houdini.update(agent, client)
    assert agent.parm("dd_status").eval().startswith("done"), agent.parm("dd_status").eval()
    breakdown = json.loads(agent.parm("dd_response").eval())
    shots = [n for n in hou.copnet.children.values() if n.type().name().endswith("::shot")]
    assert len(shots) == len(breakdown["shots"]) >= 1
    assert shots[0].parm("video_prompt").eval() == breakdown["shots"][0]["video_prompt"]
    scene = shots[0].inputs()[0]
    assert scene is not None and scene.parm("prompt").eval() == breakdown["scene"]["image_prompt"]


def test_the_shot_runs_its_image_then_its_video(
    hou: FakeHou, server: Server, server_root: Path, tmp_path: Path
):
    shot = hou.asset("shot", "sh010", **SMALL, prompt="a harbour", video_prompt="push in")
    shot.parm("output_image_path").set(f"{server_root}/shot/$OS.$F4.png")
    shot.parm("video_output_video_path").set(f"{server_root}/shot/$OS.mp4")
    shot.setInput(0, hou.cop("scene", write_picture(tmp_path / "scene.png")))
    shot.setInput(3, hou.cop("depth", write_picture(tmp_path / "depth.png", grey=30)))
    with Client(server.url) as client:
        houdini.update(shot, client)
        status = shot.parm("dd_status").eval()
        assert status.startswith("done: 2 job(s)"), status
        video = client.get(shot.parm("dd_job_id").eval())
    assert video["kind"] == "videos"
    assert video["request"]["input_image_path"] == f"{server_root}/shot/sh010.0001.png"
    assert shot.parm("dd_output").eval() == f"{server_root}/shot/sh010.mp4"
    assert Path(shot.parm("dd_output").eval()).is_file()
    reader = shot.node("file1")
    assert reader is not None and reader.parm("reload").pressed == 1
