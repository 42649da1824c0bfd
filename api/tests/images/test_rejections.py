"""Bad input: a 4xx naming the field at submit, no job created, nothing written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.tests.conftest import (
    assert_nothing_happened,
    assert_rejected,
    files_under,
    write_image,
    write_mask,
)

OK = {"model": "sd1.5", "prompt": "x", "num_inference_steps": 2, "max_width": 64, "max_height": 64}


def prepare(kind: str, workspace: Path, tmp_path: Path) -> tuple[dict, int, str]:
    """(request, expected status, expected field) for one kind of bad input."""
    plate = str(write_image(workspace / "plate.png"))
    outside = write_image(tmp_path / "outside.png")
    cases: dict[str, tuple[dict[str, Any], int, str]] = {
        "unknown model": ({"model": "sd9"}, 422, "model"),
        "missing model": ({"model": None}, 422, "model"),
        "mode the model can't do": ({"model": "sdxl-refiner"}, 422, "model"),
        "missing input file": (
            {"input_image_path": str(workspace / "nope.png")},
            422,
            "input_image_path",
        ),
        "input outside roots": ({"input_image_path": str(outside)}, 403, "input_image_path"),
        "dotdot escape": (
            {"input_image_path": f"{workspace}/../outside.png"},
            403,
            "input_image_path",
        ),
        "symlink escape": (
            {"input_image_path": str(_link(workspace / "link.png", outside))},
            403,
            "input_image_path",
        ),
        "relative path": ({"input_image_path": "plate.png"}, 422, "input_image_path"),
        "not an image": (
            {"input_image_path": str(_text(workspace / "notes.png"))},
            422,
            "input_image_path",
        ),
        "mask without image": (
            {"input_mask_path": str(write_mask(workspace / "m.png"))},
            422,
            "input_mask_path",
        ),
        "mask outside roots": (
            {"input_image_path": plate, "input_mask_path": str(outside)},
            403,
            "input_mask_path",
        ),
        "output outside roots": (
            {"output_image_path": str(tmp_path / "out.png")},
            403,
            "output_image_path",
        ),
        "output symlinked folder": (
            {"output_image_path": str(_link(workspace / "renders", tmp_path) / "out.png")},
            403,
            "output_image_path",
        ),
        "output wrong type": (
            {"output_image_path": str(workspace / "out.mov")},
            422,
            "output_image_path",
        ),
        "output is a folder": (
            {"output_image_path": str(_folder(workspace / "dir.png"))},
            422,
            "output_image_path",
        ),
        "negative steps": ({"num_inference_steps": -5}, 422, "num_inference_steps"),
        "too many steps": ({"num_inference_steps": 100000}, 422, "num_inference_steps"),
        "huge width": ({"max_width": 100000}, 422, "max_width"),
        "huge height": ({"max_height": 100000}, 422, "max_height"),
        "strength above 1": ({"input_image_path": plate, "strength": 1.5}, 422, "strength"),
        "strength below 0": ({"input_image_path": plate, "strength": -0.1}, 422, "strength"),
        "strength leaving no step": ({"input_image_path": plate, "strength": 0.1}, 422, "strength"),
        "wrong type": ({"guidance_scale": "lots"}, 422, "guidance_scale"),
        "unsupported field": ({"sampler": "euler_a"}, 422, "sampler"),
        "unknown lora": ({"loras": [{"name": "film-grain"}]}, 422, "loras.0.name"),
        "data url then a bad field": (
            {"input_image_path": _data_url(workspace / "d.png"), "strength": 0.01},
            422,
            "strength",
        ),
        "all-black mask": (
            {"input_image_path": plate, "input_mask_path": str(_black(workspace / "b.png"))},
            422,
            "input_mask_path",
        ),
        "bad data url": (
            {"input_image_path": "data:image/png;base64,@@@"},
            422,
            "input_image_path",
        ),
    }
    changes, status, field = cases[kind]
    return {k: v for k, v in (OK | changes).items() if v is not None}, status, field


def _link(path: Path, target: Path) -> Path:
    os.symlink(target, path)
    return path


def _data_url(path: Path) -> str:
    import base64

    data = write_image(path).read_bytes()
    path.unlink()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _black(path: Path) -> Path:
    from PIL import Image

    Image.new("L", (64, 64), 0).save(path)
    return path


def _text(path: Path) -> Path:
    path.write_text("not a picture")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


KINDS = [
    "unknown model",
    "missing model",
    "mode the model can't do",
    "missing input file",
    "input outside roots",
    "dotdot escape",
    "symlink escape",
    "relative path",
    "not an image",
    "mask without image",
    "mask outside roots",
    "output outside roots",
    "output symlinked folder",
    "output wrong type",
    "output is a folder",
    "negative steps",
    "too many steps",
    "huge width",
    "huge height",
    "strength above 1",
    "strength below 0",
    "strength leaving no step",
    "wrong type",
    "unsupported field",
    "unknown lora",
    "bad data url",
    "data url then a bad field",
    "all-black mask",
]


@pytest.mark.parametrize("kind", KINDS)
def test_rejected_at_submit(client: TestClient, workspace: Path, tmp_path: Path, kind: str):
    body, status, field = prepare(kind, workspace, tmp_path)
    error = assert_rejected(client, tmp_path, body, status, field)
    assert field.split(".")[0] in error["message"] or kind in ("unsupported field",)
    assert error["type"] in ("invalid_field", "forbidden")


def test_malformed_json(client: TestClient, tmp_path: Path):
    before = files_under(tmp_path)
    response = client.post(
        "/api/images", content=b'{"model": "sd1.5",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "body" and "JSON" in error["message"]
    assert_nothing_happened(client, tmp_path, before)


def test_wait_out_of_range(client: TestClient, tmp_path: Path):
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=601", json=OK)
    assert response.status_code == 422 and response.json()["error"]["field"] == "wait"
    assert_nothing_happened(client, tmp_path, before)


def test_upload_rejections(client: TestClient, tmp_path: Path):
    before = files_under(tmp_path)
    bad_type = client.post("/api/files", files={"file": ("a.txt", b"hello", "text/plain")})
    assert bad_type.status_code == 422 and bad_type.json()["error"]["field"] == "file"
    broken = client.post("/api/files", files={"file": ("a.png", b"not png", "image/png")})
    assert broken.status_code == 422 and broken.json()["error"]["field"] == "file"
    assert_nothing_happened(client, tmp_path, before)


def test_oversized_bodies_are_refused(client: TestClient, workspace: Path, tmp_path, monkeypatch):
    import api.common.http
    import api.common.router

    before = files_under(tmp_path)
    monkeypatch.setattr(api.common.http, "MAX_JSON_BYTES", 200)
    big = client.post("/api/images", json=OK | {"prompt": "x" * 300})
    assert big.status_code == 413 and big.json()["error"]["type"] == "payload_too_large"
    assert big.json()["error"]["field"] == "body"
    assert_nothing_happened(client, tmp_path, before)

    monkeypatch.setattr(api.common.router, "MAX_UPLOAD_BYTES", 100)
    data = write_image(workspace / "p.png").read_bytes()
    before = files_under(tmp_path)
    upload = client.post("/api/files", files={"file": ("p.png", data, "image/png")})
    assert upload.status_code == 413 and upload.json()["error"]["field"] == "file"
    assert_nothing_happened(client, tmp_path, before)


def test_wider_than_the_weights_can_make(client: TestClient, tmp_path: Path, tiny_models: Path):
    """SD3's transformer has position embeddings for so many patches a side: asking for more
    is a 422 at submit (the fuzzer found it failing at run time), read from its config."""
    import json

    config = json.loads((tiny_models / "sd3" / "transformer" / "config.json").read_text())
    largest = config["pos_embed_max_size"] * config["patch_size"] * 8
    body = OK | {"model": "sd3", "max_width": largest + 16}
    assert_rejected(client, tmp_path, body, 422, "max_width", f"at most {largest} px a side")
    assert client.post("/api/images?wait=60", json=OK | {"model": "sd3"}).status_code == 200


def test_smaller_than_the_model_makes(client: TestClient, workspace: Path, tmp_path: Path):
    """A side under the model's minimum is a 422 at submit: tiny weights' UNets can't
    normalise a 1x1 latent (16 px without guidance failed the job as internal_error)."""
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert {name: models[name]["min_size"] for name in ("sd1.5", "sdxl", "sd3")} == {
        name: 32 for name in ("sd1.5", "sdxl", "sd3")
    }
    assert models["depth-anything"]["min_size"] is None  # a task: the input's size
    for name in ("max_width", "max_height"):
        body = OK | {"guidance_scale": 1.0, name: 16}
        assert_rejected(client, tmp_path, body, 422, name, "at least 32 px a side")
    # A plate's aspect ratio, kept, can make a side too small within large enough bounds.
    wide = write_image(workspace / "wide.png", (256, 32))
    body = OK | {"input_image_path": str(wide), "strength": 1.0}
    error = assert_rejected(client, tmp_path, body, 422, "input_image_path", "would be 64x16")
    assert "min_size of 32 px a side" in error["message"]
    smallest = OK | {"guidance_scale": 1.0, "max_width": 32, "max_height": 32}
    job = client.post("/api/images?wait=60", json=smallest).json()
    assert job["status"] == "succeeded", job["error"]
    assert (job["result"]["images"][0]["width"], job["result"]["images"][0]["height"]) == (32, 32)


def test_real_weights_refuse_sizes_they_make_noise_at(
    make_client, tiny_models: Path, tmp_path: Path
):
    """The same weights without the tiny marker count as real: the family's minimum applies
    (sd1.5: 256; sdxl, whose weights are absent here: 512)."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(
        tiny_models / "sd1.5", models / "sd1.5", ignore=shutil.ignore_patterns("tiny.json")
    )
    client = make_client(models_dir=models)
    listed = {m["name"]: m for m in client.get("/api/models").json()}
    assert (listed["sd1.5"]["min_size"], listed["sdxl"]["min_size"]) == (256, 512)
    body = OK | {"max_width": 240, "max_height": 512}
    error = assert_rejected(client, tmp_path, body, 422, "max_width", "at least 256 px a side")
    assert "tiny" not in error["message"]
