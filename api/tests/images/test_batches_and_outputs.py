"""Batches (num_images) and float outputs (EXR, 16-bit PNG and TIFF), end to end through
HTTP on the tiny models: each output read back and compared with the 8-bit image of the
same request."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import OpenEXR
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image

from api.common.media import srgb_to_linear
from api.tests.conftest import assert_rejected, image_request, png_metadata, run_job


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def png16(path: Path) -> np.ndarray:
    """A 16-bit PNG's RGB samples (OpenCV reads them as they are; PIL would cut to 8)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None and bgr.dtype == np.uint16 and bgr.shape[2] == 3
    return bgr[..., ::-1]


def test_a_batch_writes_numbered_images_each_rerunnable_alone(client: TestClient, workspace: Path):
    body = image_request(workspace, "text_to_image", model="sd1.5")
    out = workspace / "renders" / "batch.png"
    job = run_job(client, body | {"num_images": 3, "output_image_path": str(out)})

    result = job["result"]
    assert result["seed"] == 7 and job["request"]["num_images"] == 3
    paths = [workspace / "renders" / f"batch_{n:04d}.png" for n in (1, 2, 3)]
    assert [image["path"] for image in result["images"]] == [str(p) for p in paths]
    assert [image["seed"] for image in result["images"]] == [7, 8, 9]
    assert not out.exists()  # the batch's name, not a file of its own
    for path, seed in zip(paths, (7, 8, 9), strict=True):
        meta = png_metadata(path)
        assert meta["seed"] == seed and meta["request"]["seed"] == seed
        assert meta["request"]["num_images"] == 1
        assert meta["request"]["output_image_path"] == str(path)
        assert Path(result["images"][seed - 7]["take_path"]).parent == out.parent / "tmp"
    images = [pixels(path) for path in paths]
    assert not np.array_equal(images[0], images[1])  # each its own seed

    alone = run_job(client, body | {"seed": 8, "output_image_path": str(workspace / "8.png")})
    assert np.array_equal(pixels(workspace / "8.png"), images[1])
    assert alone["result"]["images"][0]["seed"] == 8


def test_a_batch_without_an_output_path_lands_in_the_data_dir(client: TestClient, workspace: Path):
    job = run_job(client, image_request(workspace, "image_to_image", model="sdxl", num_images=2))
    names = [Path(image["path"]).name for image in job["result"]["images"]]
    assert names == ["sdxl_7_0001.png", "sdxl_7_0002.png"]
    for image in job["result"]["images"]:
        served = client.get(image["url"])
        assert served.status_code == 200 and served.content == Path(image["path"]).read_bytes()
        assert png_metadata(Path(image["path"]))["request"]["output_image_path"] is None


def test_exr_output_is_half_float_linear_rgb(client: TestClient, workspace: Path):
    body = image_request(workspace, "text_to_image", model="sd1.5", max_width=96)
    eight = workspace / "eight.png"
    run_job(client, body | {"output_image_path": str(eight)})
    exr = workspace / "plate.exr"
    job = run_job(client, body | {"output_image_path": str(exr)})

    assert job["result"]["images"][0]["path"] == str(exr)
    with OpenEXR.File(str(exr), separate_channels=True) as file:
        channels = file.channels()
        assert sorted(channels) == ["B", "G", "R"]
        linear = np.stack([channels[c].pixels for c in "RGB"], axis=-1)
        header = dict(file.header())
    assert linear.dtype == np.float16 and linear.shape == (64, 96, 3)
    # Linear light: the 8-bit sRGB image of the same request, decoded, within 8-bit rounding.
    decoded = srgb_to_linear(pixels(eight) / 255)
    assert np.abs(linear.astype(np.float32) - decoded).max() < 0.01
    assert not np.allclose(linear, pixels(eight) / 255, atol=0.02)  # not left sRGB-encoded
    meta = json.loads(header["deferred-diffusion"])
    assert meta["request"]["output_image_path"] == str(exr) and meta["seed"] == 7


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_outputs_keep_the_float_decode(client: TestClient, workspace: Path, suffix: str):
    body = image_request(workspace, "image_to_image", model="sd1.5")
    eight = workspace / "eight.png"
    run_job(client, body | {"output_image_path": str(eight)})
    out = workspace / f"deep{suffix}"
    run_job(client, body | {"output_image_path": str(out), "bit_depth": 16})

    if suffix == ".png":
        deep = png16(out)
        meta = png_metadata(out)
    else:
        with tifffile.TiffFile(out) as tiff:
            deep = tiff.asarray()
            meta = json.loads(tiff.pages.first.description)
    assert deep.dtype == np.uint16 and deep.shape == (64, 64, 3)
    # The same image as the 8-bit one, with the levels between its steps.
    assert np.abs(deep / 65535 * 255 - pixels(eight)).max() <= 0.5 + 1e-6
    assert np.any(deep % 257 != 0)  # not an 8-bit image scaled up
    assert meta["bit_depth"] == 16 and meta["request"]["bit_depth"] == 16


def test_8_bit_tiff(client: TestClient, workspace: Path):
    body = image_request(workspace, "text_to_image", model="sd1.5")
    run_job(client, body | {"output_image_path": str(workspace / "a.png")})
    run_job(client, body | {"output_image_path": str(workspace / "a.tif")})
    with tifffile.TiffFile(workspace / "a.tif") as tiff:
        assert tiff.asarray().dtype == np.uint8
        assert json.loads(tiff.pages.first.description)["seed"] == 7
    assert np.array_equal(pixels(workspace / "a.tif"), pixels(workspace / "a.png"))


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"num_images": 17}, "num_images", "less than or equal to 16"),
        ({"num_images": 0}, "num_images", "greater than or equal to 1"),
        ({"seed": 2**63 - 2, "num_images": 3}, "seed", "the batch's last seed"),
        ({"bit_depth": 16, "output_image_path": "OUT.jpg"}, "bit_depth", "needs a .png or .tif"),
        ({"bit_depth": 12}, "bit_depth", "Input should be 8 or 16"),
        ({"output_image_path": "OUT.hdr"}, "output_image_path", ".exr"),
        (
            {"output_image_path": "OUT.exr", "inpainting_full_image": False},
            "inpainting_full_image",
            "needs inpainting_full_image true",
        ),
    ],
)
def test_bad_batches_and_depths_are_refused(
    client: TestClient, workspace: Path, tmp_path: Path, extra: dict, field: str, message: str
):
    body = image_request(workspace, "inpainting", model="sd1.5") | extra
    if "output_image_path" in body:
        body["output_image_path"] = str(workspace / body["output_image_path"])
    assert_rejected(client, tmp_path, body, 422, field, message)
