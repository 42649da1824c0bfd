"""DD_PRECISION=fp8 on a GPU with FP8 matmuls (Ada, Hopper and later), on the tiny models
through the server: jobs run, record fp8, re-run to the same pixels, and differ from bf16
by a bounded amount (the same picture, FP8's rounding). Full-size figures: bench/fp8.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.common.video import decode_mp4
from api.main import create_app
from api.tests.conftest import decode, png_metadata, write_image

DEVICE = "cuda:0"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability(0) < (8, 9),
        reason="needs a GPU with FP8 matmuls (compute capability 8.9+)",
    ),
]
QUICK = {"prompt": "x", "num_inference_steps": 2, "max_width": 64, "max_height": 64, "seed": 3}
# Far from identical pixels, far above two unrelated pictures (~10 dB for noise).
MIN_PSNR_DB = 20.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


@pytest.mark.parametrize("model", ["sdxl", "flux-schnell", "sd3"])
def test_an_fp8_image_is_close_to_bf16_and_reruns_the_same(
    make_settings, workspace: Path, model: str
):
    pixels = {}
    for precision in ("bf16", "fp8"):
        out = workspace / f"{model}-{precision}.png"
        body = QUICK | {"model": model, "output_image_path": str(out)}
        settings = make_settings(precision=precision, data_dir=workspace / precision)
        with TestClient(create_app(settings, devices=[DEVICE])) as client:
            job = client.post("/api/images?wait=300", json=body).json()
            assert job["status"] == "succeeded", job["error"]
            assert job["result"]["precision"] == precision
            assert png_metadata(out)["precision"] == precision
            pixels[precision] = np.asarray(decode(out.read_bytes()))
            again = client.post(f"/api/jobs/{job['id']}/rerun?wait=300").json()
            assert again["status"] == "succeeded", again["error"]
            assert np.array_equal(np.asarray(decode(out.read_bytes())), pixels[precision])
    assert not np.array_equal(pixels["fp8"], pixels["bf16"])  # FP8 really ran
    assert psnr(pixels["fp8"], pixels["bf16"]) > MIN_PSNR_DB


@pytest.mark.parametrize("model", ["ltx-video", "cogvideox"])
def test_an_fp8_video_is_close_to_bf16_and_reruns_the_same(
    make_settings, workspace: Path, model: str
):
    """LTX's image→video pipeline comes from from_pipe(dtype=bf16), which casts every
    module: the FP8 weights must come through it."""
    plate = write_image(workspace / "plate.png", (96, 64))
    body = {"model": model, "prompt": "x", "input_image_path": str(plate), "seed": 2}
    frames = {}
    for precision in ("bf16", "fp8"):
        settings = make_settings(precision=precision, data_dir=workspace / precision)
        with TestClient(create_app(settings, devices=[DEVICE])) as client:
            jobs = [client.post("/api/videos?wait=600", json=body).json() for _ in range(2)]
            for job in jobs:
                assert job["status"] == "succeeded", job["error"]
                assert job["result"]["precision"] == precision
            made = [decode_mp4(client.get(job["result"]["video"]["url"]).content) for job in jobs]
        assert np.array_equal(made[0], made[1])
        frames[precision] = made[0]
    assert not np.array_equal(frames["fp8"], frames["bf16"])
    assert psnr(frames["fp8"], frames["bf16"]) > MIN_PSNR_DB
