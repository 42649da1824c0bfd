"""sd-x4-upscaler end to end on the tiny model: 4x output, tiling, determinism, rejections."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionUpscalePipeline
from fastapi.testclient import TestClient
from PIL import Image

from api.images.models.upscaler import tile_starts, upscale
from api.images.registry import UPSCALE_NOISE_LEVEL, UPSCALE_TILE_OVERLAP
from api.tests.conftest import (
    assert_nothing_happened,
    decode,
    files_under,
    png_metadata,
    run_job,
    write_image,
)


def pixels(client: TestClient, job: dict) -> np.ndarray:
    return np.asarray(decode(client.get(job["result"]["images"][0]["url"]).content))


def test_upscales_4x_in_tiles(client: TestClient, workspace: Path):
    # 150x90 is padded to 152x96: two 128-px tiles across, one down (2 steps each).
    plate = write_image(workspace / "plate.png", (150, 90))
    out = workspace / "renders" / "plate_x4.png"
    body = {
        "model": "sd-x4-upscaler",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "seed": 7,
        "num_inference_steps": 2,
        "input_image_path": str(plate),
        "output_image_path": str(out),
    }
    job = run_job(client, body)
    result = job["result"]
    assert result["mode"] == "upscale" and result["seed"] == 7 and result["tiny_weights"]
    [image] = result["images"]
    assert (image["width"], image["height"]) == (600, 360)
    assert image["path"] == str(out)
    with Image.open(out) as written:
        assert written.size == (600, 360) and written.mode == "RGB"
    assert job["progress"] == {"step": 4, "total": 4}  # steps x tiles
    assert job["request"]["guidance_scale"] == 9.0
    meta = png_metadata(out)
    assert meta["model"] == "sd-x4-upscaler" and meta["mode"] == "upscale"
    assert meta["repo"] == "stabilityai/stable-diffusion-x4-upscaler"
    assert (meta["width"], meta["height"]) == (600, 360)
    assert meta["seed"] == 7 and meta["num_inference_steps"] == 2
    assert meta["noise_level"] == UPSCALE_NOISE_LEVEL and meta["job_id"] == job["id"]
    take = Path(image["take_path"])
    assert take.parent == out.parent / "tmp" and take.read_bytes() == out.read_bytes()
    assert client.get(image["url"]).content == out.read_bytes()

    first = np.asarray(decode(out.read_bytes()))
    assert np.array_equal(pixels(client, run_job(client, body)), first)
    assert not np.array_equal(pixels(client, run_job(client, body | {"seed": 8})), first)


def test_one_tile_equals_a_direct_diffusers_call(
    client: TestClient, tiny_models: Path, workspace: Path
):
    plate = write_image(workspace / "small.png", (64, 48), seed=3)
    job = run_job(
        client,
        {
            "model": "sd-x4-upscaler",
            "prompt": "a cat",
            "seed": 11,
            "num_inference_steps": 2,
            "guidance_scale": 5.0,
            "input_image_path": str(plate),
        },
    )
    served = pixels(client, job)
    assert served.shape == (192, 256, 3)
    assert Path(job["result"]["images"][0]["path"]).name == "sd-x4-upscaler_11.png"

    pipe = StableDiffusionUpscalePipeline.from_pretrained(tiny_models / "sd-x4-upscaler")
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.in_channels == 7
    direct = pipe(
        prompt="a cat",
        image=Image.open(plate).convert("RGB"),
        num_inference_steps=2,
        guidance_scale=5.0,
        noise_level=UPSCALE_NOISE_LEVEL,
        generator=torch.Generator("cpu").manual_seed(11),
    ).images[0]
    assert np.array_equal(served, np.asarray(direct))


class NearestUpscaler:
    """Stands in for the pipeline: a perfect (nearest-neighbour) 4x upscale of each tile."""

    def __init__(self) -> None:
        self.tiles: list[tuple[int, int]] = []

    def __call__(self, image, generator, callback, output_type, num_inference_steps, **_):
        self.tiles.append(image.size)
        for step in range(num_inference_steps):
            callback(step, 0, None)
        big = image.resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)
        return SimpleNamespace(images=[np.asarray(big, dtype=np.float32) / 255])


@pytest.mark.parametrize("size", [(300, 200), (37, 21), (128, 128), (129, 250)])
def test_tiles_blend_without_seams(size: tuple[int, int]):
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )
    fake = NearestUpscaler()
    calls: list[tuple[int, int]] = []
    out = upscale(
        fake,
        image,
        {"num_inference_steps": 3},
        seed=1,
        tile=(128, 128),
        progress=lambda step, total: calls.append((step, total)),
    )
    expected = image.resize((size[0] * 4, size[1] * 4), Image.Resampling.NEAREST)
    assert out.size == expected.size
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    total = len(fake.tiles) * 3
    assert calls == [(step, total) for step in range(1, total + 1)]
    assert all(w <= 128 and h <= 128 and w % 8 == 0 and h % 8 == 0 for w, h in fake.tiles)


def test_tile_starts_cover_with_overlap():
    for length in range(8, 2048, 8):
        starts = tile_starts(length, min(128, length), UPSCALE_TILE_OVERLAP)
        assert starts[0] == 0 and starts[-1] + min(128, length) == length
        assert all(s % 8 == 0 for s in starts)
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert all(0 < gap <= 128 - UPSCALE_TILE_OVERLAP + 8 for gap in gaps)


@pytest.mark.parametrize(
    ("kind", "field", "words"),
    [
        ("no input image", "input_image_path", "Field required"),
        ("input too large", "input_image_path", "16384"),
    ],
)
def test_rejected(client: TestClient, workspace: Path, tmp_path: Path, kind, field, words):
    body = {"model": "sd-x4-upscaler", "prompt": "x"}
    if kind == "input too large":
        big = workspace / "big.png"
        Image.new("RGB", (4097, 8)).save(big)
        body["input_image_path"] = str(big)
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and field in error["message"] and words in error["message"]
    assert_nothing_happened(client, tmp_path, before)
