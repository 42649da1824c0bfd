"""depth-anything end to end on the tiny model: png8, png16 and float EXR at the input size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from api.common.models import CacheKey
from api.common.runtime import ModelRuntime
from api.common.services import Services
from api.images.models.depth import estimate_depth
from api.tests.conftest import (
    assert_nothing_happened,
    files_under,
    png_metadata,
    run_job,
    write_image,
)

SIZE = (72, 40)


@pytest.fixture(scope="module")
def direct_depth(tiny_models: Path):
    """The tiny model's depth of a picture, computed straight with transformers."""
    folder = tiny_models / "depth-anything"
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder)

    def predict(path: Path) -> np.ndarray:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        depth = processor.post_process_depth_estimation(
            outputs, target_sizes=[(image.height, image.width)]
        )[0]["predicted_depth"]
        return depth.numpy()

    return predict


def normalised(depth: np.ndarray) -> np.ndarray:
    return (depth - depth.min()) / (depth.max() - depth.min())


@pytest.mark.parametrize(
    ("depth_format", "name", "mode"),
    [("png8", "depth.png", "L"), ("png16", "depth16.png", "I;16"), ("exr", "depth.exr", None)],
)
def test_depth_formats(
    client: TestClient, workspace: Path, direct_depth, depth_format: str, name: str, mode
):
    plate = write_image(workspace / "plate.png", SIZE)
    out = workspace / "renders" / name
    job = run_job(
        client,
        {
            "model": "depth-anything",
            "input_image_path": str(plate),
            "depth_format": depth_format,
            "output_image_path": str(out),
        },
    )
    result = job["result"]
    assert result["mode"] == "depth" and result["tiny_weights"] is True
    [image] = result["images"]
    assert (image["width"], image["height"]) == SIZE and image["path"] == str(out)
    assert Path(image["take_path"]).read_bytes() == out.read_bytes()
    assert client.get(image["url"]).content == out.read_bytes()
    expected = direct_depth(plate)
    assert expected.shape == SIZE[::-1]

    if depth_format == "exr":
        exr = OpenEXR.File(str(out), separate_channels=True)
        channels = exr.channels()
        assert list(channels) == ["Y"]
        depth = channels["Y"].pixels
        assert depth.dtype == np.float32 and depth.shape == SIZE[::-1]
        np.testing.assert_allclose(depth, expected, rtol=1e-5, atol=1e-12)
        meta = json.loads(exr.header()["deferred-diffusion"])
        assert exr.header()["model"] == "depth-anything"
    else:
        with Image.open(out) as written:
            assert written.mode == mode and written.size == SIZE
            values = np.asarray(written).astype(np.float64)
        top = 255 if depth_format == "png8" else 65535
        assert values.min() == 0 and values.max() == top
        assert np.abs(values - normalised(expected) * top).max() <= 1 + top * 1e-4
        meta = png_metadata(out)
    assert meta["depth_format"] == depth_format and meta["mode"] == "depth"
    assert (meta["width"], meta["height"]) == SIZE and meta["job_id"] == job["id"]


def test_exr_by_default_goes_to_the_data_dir_as_exr(client: TestClient, workspace: Path, tmp_path):
    plate = write_image(workspace / "plate.png", (32, 32))
    job = run_job(
        client,
        {"model": "depth-anything", "input_image_path": str(plate), "depth_format": "exr"},
    )
    [image] = job["result"]["images"]
    path = Path(image["path"])
    assert path.suffix == ".exr" and path.is_relative_to(tmp_path / "data" / "outputs")
    assert image["take_path"] is None
    assert OpenEXR.File(str(path)).channels()["Y"].pixels.shape == (32, 32)
    served = client.get(image["url"])
    assert served.headers["content-type"] == "image/x-exr"
    assert served.content == path.read_bytes()


def test_estimate_depth_for_controlnets(make_settings, workspace: Path, direct_depth):
    plate = write_image(workspace / "plate.png", SIZE)
    runtime = ModelRuntime(Services.from_settings(make_settings()), "cpu")
    depth = estimate_depth(Image.open(plate), runtime)
    assert depth.mode == "RGB" and depth.size == SIZE
    grey = np.asarray(depth)[..., 0].astype(np.float64)
    assert np.abs(grey - normalised(direct_depth(plate)) * 255).max() <= 1
    assert runtime.tiny and runtime.cache.keys() == [CacheKey("depth-anything")]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        (
            {"depth_format": "exr", "output_image_path": "renders/d.png"},
            "output_image_path",
            ".exr",
        ),
        ({"depth_format": "png16", "output_image_path": "d.jpg"}, "output_image_path", ".png"),
        ({"depth_format": "tiff"}, "depth_format", "png8"),
    ],
    ids=["exr to png", "png16 to jpg", "unknown format"],
)
def test_rejected(
    client: TestClient, workspace: Path, tmp_path: Path, changes: dict, field: str, words: str
):
    body = {"model": "depth-anything", "input_image_path": str(write_image(workspace / "p.png"))}
    if "output_image_path" in changes:
        changes = changes | {"output_image_path": str(workspace / changes["output_image_path"])}
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body | changes)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and field in error["message"] and words in error["message"]
    assert_nothing_happened(client, tmp_path, before)
