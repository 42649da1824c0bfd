"""Image requests: valid Unicode only, bounded strings and lists, one request per kind of
model (generation, upscaling, depth, segmentation), and small default sizes on tiny weights."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.common.jobs.store import JobStore
from api.common.schemas import request_fields
from api.images.schemas import DepthRequest, ImageRequest, SegmentationRequest, UpscaleRequest
from api.tests.conftest import (
    assert_nothing_happened,
    assert_rejected,
    files_under,
    image_request,
    png_metadata,
    run_job,
    write_image,
)

DEPTH_FIELDS = ["model", "input_image_path", "output_image_path", "depth_format"]
SEGMENTATION_FIELDS = [
    "model",
    "input_image_path",
    "output_image_path",
    "prompt",
    "box_threshold",
    "text_threshold",
]
UPSCALE_FIELDS = [
    "model",
    "input_image_path",
    "output_image_path",
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "optimize_low_vram",
]


def post_raw(client: TestClient, body: dict):
    """POST ``body`` as JSON with non-ASCII escaped, so that a lone surrogate (which UTF-8
    can't encode) goes over the wire as ``\\ud800``, as a client's JSON encoder sends it."""
    return client.post(
        "/api/images?wait=5",
        content=json.dumps(body).encode("ascii"),
        headers={"content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "x\ud800y"}, "prompt"),
        ({"negative_prompt": "\udc00"}, "negative_prompt"),
        (
            {"controlnets": [{"model": "depth", "image_path": "/a/\ud800.png"}]},
            "controlnets.0.image_path",
        ),
        ({"model": "depth-anything", "output_image_path": "/a/\udfff.png"}, "output_image_path"),
        ({"model": "sd\ud800"}, "model"),
    ],
    ids=["prompt", "negative prompt", "controlnet image", "task model output", "model"],
)
def test_invalid_unicode_is_refused_at_submit(
    client: TestClient, workspace: Path, tmp_path: Path, change: dict, field: str
):
    body = {"model": "sd1.5", "input_image_path": str(write_image(workspace / "p.png"))} | change
    before = files_under(tmp_path)
    response = post_raw(client, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and "not valid Unicode" in error["message"]
    assert "lone UTF-16 surrogate" in error["message"]
    assert_nothing_happened(client, tmp_path, before)
    assert client.get("/api/jobs").status_code == 200


PATH = "/" + "a" * 4096  # 4097 characters


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"prompt": "x" * 10_001}, "prompt", "at most 10000 characters"),
        ({"negative_prompt": "x" * 10_001}, "negative_prompt", "at most 10000 characters"),
        ({"model": "m" * 201}, "model", "at most 200 characters"),
        ({"input_image_path": PATH}, "input_image_path", "a path is at most 4096 characters"),
        ({"output_image_path": PATH}, "output_image_path", "at most 4096 characters"),
        (
            {"controlnets": [{"model": "depth", "image_path": PATH}]},
            "controlnets.0.image_path",
            "a path is at most 4096",
        ),
        (
            {"ip_adapters": [{"model": "style", "image_path": "/x.png", "mask_path": PATH}]},
            "ip_adapters.0.mask_path",
            "a path is at most 4096",
        ),
        (
            {"controlnets": [{"model": "depth", "image_path": "/x.png"}] * 5},
            "controlnets",
            "at most 4 items",
        ),
        (
            {"ip_adapters": [{"model": "style", "image_path": "/x.png"}] * 5},
            "ip_adapters",
            "at most 4 items",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None,
)
def test_strings_and_lists_are_bounded(
    client: TestClient, workspace: Path, tmp_path: Path, change: dict, field: str, words: str
):
    body = image_request(workspace, "text_to_image", model="sd1.5") | change
    assert_rejected(client, tmp_path, body, 422, field, words)


def test_a_50_mb_prompt_is_refused(client: TestClient, workspace: Path, tmp_path: Path):
    body = image_request(workspace, "text_to_image", model="sd1.5", prompt="x" * 50_000_000)
    error = assert_rejected(client, tmp_path, body, 422, "prompt", "at most 10000 characters")
    assert len(error["message"]) < 200  # the prompt is not echoed back


def _properties(schema: dict) -> dict[str, dict]:
    return {
        name: next((s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"), prop)
        for name, prop in schema["properties"].items()
    }


def test_every_string_and_list_of_every_request_is_bounded(client: TestClient):
    components = client.get("/openapi.json").json()["components"]["schemas"]
    names = ["ImageRequest", "UpscaleRequest", "DepthRequest", "SegmentationRequest"]
    names += ["ControlNet", "IpAdapter"]
    checked = 0
    for name in names:
        for field, prop in _properties(components[name]).items():
            if prop.get("type") == "string" and "enum" not in prop:
                assert prop.get("maxLength"), f"{name}.{field} is an unbounded string"
                checked += 1
            if prop.get("type") == "array":
                assert prop.get("maxItems"), f"{name}.{field} is an unbounded list"
                checked += 1
    assert checked >= 20
    assert components["ImageRequest"]["additionalProperties"] is False


def test_a_data_url_may_be_longer_than_a_path(client: TestClient, workspace: Path):
    import base64

    plate = write_image(workspace / "plate.png", (64, 64))
    url = "data:image/png;base64," + base64.b64encode(plate.read_bytes()).decode()
    assert len(url) > 4096
    body = image_request(workspace, "text_to_image", model="sd1.5", input_image_path=url)
    assert run_job(client, body)["result"]["mode"] == "image_to_image"


def _text_chunks_size(data: bytes) -> int:
    """Bytes of a PNG's tEXt/iTXt/zTXt chunks."""
    total, at = 0, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        if data[at + 4 : at + 8] in (b"tEXt", b"iTXt", b"zTXt"):
            total += length
        at += 12 + length
    return total


def test_metadata_of_the_longest_prompts_stays_bounded(client: TestClient, workspace: Path):
    """PNG: every parameter in full, under 512 KiB for the longest prompts of the widest
    characters. JPEG (64 KiB of EXIF at most): long texts shortened, and it says so."""
    longest = "😀" * 10_000  # 4 bytes in UTF-8, 12 characters in escaped JSON
    body = image_request(
        workspace, "text_to_image", model="sd1.5", prompt=longest, negative_prompt=longest
    )
    png = workspace / "long.png"
    run_job(client, body | {"output_image_path": str(png)})
    meta = png_metadata(png)
    assert meta["prompt"] == longest and meta["negative_prompt"] == longest
    assert 200_000 < _text_chunks_size(png.read_bytes()) < 512 * 1024

    jpeg = workspace / "long.jpg"
    run_job(client, body | {"output_image_path": str(jpeg)})
    with Image.open(jpeg) as image:
        description = image.getexif()[0x010E]
    assert len(description) <= 60_000
    meta = json.loads(description)
    assert meta["metadata_shortened"] is True and meta["prompt"].startswith("😀" * 1000)
    assert meta["prompt"].endswith("more characters]") and meta["seed"] == 7


@pytest.mark.parametrize(
    ("model", "field", "kind", "fields"),
    [
        ("depth-anything", "strength", "depth", DEPTH_FIELDS),
        ("depth-anything", "max_width", "depth", DEPTH_FIELDS),
        ("segment-anything", "seed", "segmentation", SEGMENTATION_FIELDS),
        ("sd-x4-upscaler", "input_mask_path", "upscale", UPSCALE_FIELDS),
        ("sd1.5", "depth_format", "image_to_image, inpainting, text_to_image", None),
        ("sdxl", "box_threshold", "image_to_image, inpainting, text_to_image", None),
    ],
)
def test_a_field_that_does_not_apply_is_refused(
    client: TestClient,
    workspace: Path,
    tmp_path: Path,
    model: str,
    field: str,
    kind: str,
    fields: list[str] | None,
):
    plate = str(write_image(workspace / "plate.png"))
    values = {"strength": 0.5, "max_width": 64, "seed": 1, "input_mask_path": plate}
    body: dict[str, Any] = {"model": model, "prompt": "cat", "input_image_path": plate}
    if model == "depth-anything":
        del body["prompt"]
    body[field] = values.get(field, "exr" if field == "depth_format" else 0.5)
    fields = [*fields, "priority", "callback_url"] if fields else request_fields(ImageRequest)
    error = assert_rejected(client, tmp_path, body, 422, field)
    assert error["message"] == (
        f"{field}: does not apply to {model} ({kind}); its fields: {', '.join(fields)}"
    )


def test_unknown_model_is_named(client: TestClient, tmp_path: Path):
    error = assert_rejected(client, tmp_path, {"model": "sd9", "strength": 0.5}, 422, "model")
    assert "unknown image model 'sd9'" in error["message"]


def test_each_task_records_only_its_fields(client: TestClient, workspace: Path):
    plate = str(write_image(workspace / "plate.png", (32, 32)))
    depth = run_job(client, {"model": "depth-anything", "input_image_path": plate})
    # Every request records its priority (pydantic lists the shared fields first).
    assert list(depth["request"]) == ["priority", *DEPTH_FIELDS]
    assert depth["request"]["depth_format"] == "png8" and depth["result"]["seed"] is None
    segmentation = run_job(
        client,
        {
            "model": "segment-anything",
            "prompt": "cat",
            "input_image_path": plate,
            "box_threshold": 0,
            "text_threshold": 0,
        },
    )
    assert list(segmentation["request"]) == ["priority", *SEGMENTATION_FIELDS]
    upscale = run_job(
        client,
        {"model": "sd-x4-upscaler", "input_image_path": plate, "num_inference_steps": 1},
    )
    assert list(upscale["request"]) == ["priority", *UPSCALE_FIELDS]
    assert upscale["request"]["guidance_scale"] == 9.0 and upscale["request"]["seed"] is not None
    generative = run_job(client, image_request(workspace, "text_to_image", model="sd1.5"))
    # callback_url, unset, is not recorded
    assert list(generative["request"]) == ["priority", *request_fields(ImageRequest)[:-2]]
    assert not {"depth_format", "box_threshold", "text_threshold"} & set(ImageRequest.model_fields)


def test_openapi_documents_one_request_per_kind(client: TestClient):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/images"]["post"]["requestBody"]["content"]["application/json"]
    refs = [option["$ref"].rsplit("/", 1)[1] for option in body["schema"]["anyOf"]]
    assert refs == ["ImageRequest", "UpscaleRequest", "DepthRequest", "SegmentationRequest"]
    components = spec["components"]["schemas"]
    for request in (ImageRequest, UpscaleRequest, DepthRequest, SegmentationRequest):
        assert list(components[request.__name__]["properties"]) == list(request.model_fields)
    assert components["DepthRequest"]["required"] == ["model", "input_image_path"]


def test_a_job_queued_by_an_earlier_version_still_runs(make_client, workspace: Path, tmp_path):
    """Before per-task requests, every job held every image field (defaults filled)."""
    plate = str(write_image(workspace / "plate.png", (32, 32)))
    old = {
        "model": "depth-anything",
        "prompt": "",
        "negative_prompt": "",
        "seed": 5,
        "num_inference_steps": None,
        "guidance_scale": None,
        "strength": 0.5,
        "max_width": 518,
        "max_height": 518,
        "input_image_path": plate,
        "input_mask_path": None,
        "output_image_path": None,
        "inpainting_full_image": True,
        "optimize_low_vram": False,
        "controlnets": [],
        "ip_adapters": [],
        "depth_format": "png16",
        "box_threshold": 0.3,
        "text_threshold": 0.25,
    }
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    queued = store.submit("images", "depth-anything", old)
    store.close()
    client = make_client()
    job = client.get(f"/api/jobs/{queued.id}?wait=60").json()
    assert job["status"] == "succeeded", job["error"]
    with Image.open(job["result"]["images"][0]["path"]) as image:
        assert image.mode == "I;16"  # its depth_format was kept


def test_tiny_weights_default_to_a_small_size(client: TestClient, workspace: Path):
    body = {"model": "sdxl", "prompt": "a crate", "seed": 1, "num_inference_steps": 2}
    job = run_job(client, body)
    assert (job["request"]["max_width"], job["request"]["max_height"]) == (64, 64)
    [image] = job["result"]["images"]
    assert (image["width"], image["height"]) == (64, 64)
    with Image.open(io.BytesIO(client.get(image["url"]).content)) as written:
        assert written.size == (64, 64)
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["sdxl"]["defaults"] | {"num_inference_steps": 0} == {
        "width": 64,
        "height": 64,
        "num_inference_steps": 0,
        "guidance_scale": 5.0,
    }
    assert models["depth-anything"]["defaults"]["width"] == 518  # a task: its working size


def test_real_weights_keep_the_native_size(make_client, tiny_models: Path, tmp_path: Path):
    """The same weights without the tiny marker count as real: the native size applies."""
    models = tmp_path / "models"
    shutil.copytree(
        tiny_models / "sd1.5", models / "sd1.5", ignore=shutil.ignore_patterns("tiny.json")
    )
    client = make_client(models_dir=models)
    listed = {m["name"]: m for m in client.get("/api/models").json()}
    assert listed["sd1.5"]["weights"]["tiny"] is False
    assert (listed["sd1.5"]["defaults"]["width"], listed["sd1.5"]["defaults"]["height"]) == (
        512,
        512,
    )
    job = client.post("/api/images", json={"model": "sd1.5", "num_inference_steps": 1}).json()
    assert (job["request"]["max_width"], job["request"]["max_height"]) == (512, 512)
    client.delete(f"/api/jobs/{job['id']}")
