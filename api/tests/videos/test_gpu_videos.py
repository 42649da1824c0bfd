"""CUDA paths of the video models on their tiny weights: bf16 straight onto the GPU, VAE
tiling, Wan's float32 VAE and image encoder, optimize_low_vram (model offload; group
offload for Wan), step_cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from api.common.models import Weights, building_models
from api.videos.models.diffusion import generate, load
from api.videos.registry import VIDEO_MODELS, VideoMode

pytestmark = pytest.mark.gpu

DEVICE = "cuda:0"
CASES = [
    (name, mode)
    for name, model in VIDEO_MODELS.items()
    if not model.external
    for mode in sorted(model.modes)
]


@pytest.mark.parametrize("low_vram", [False, True], ids=["resident", "low_vram"])
@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_generates_on_the_gpu(tiny_video_models: Path, name: str, mode: VideoMode, low_vram):
    model = VIDEO_MODELS[name]
    with building_models(DEVICE):
        loaded = load(
            model, Weights("models_dir", str(tiny_video_models / name), tiny=True), DEVICE, low_vram
        )
    pipe = loaded.pipeline(mode)
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    assert denoiser.dtype == torch.bfloat16
    assert getattr(pipe.vae, "use_tiling", True)  # SVD's VAE has no tiling
    if name == "wan-2.1":
        assert pipe.vae.dtype == pipe.image_encoder.dtype == torch.float32
    if not low_vram:
        assert denoiser.device == torch.device(DEVICE)
    image = Image.new("RGB", (64, 32), (200, 120, 40)) if mode == VideoMode.image_to_video else None

    def run(seed: int, step_cache: float | None = None) -> np.ndarray:
        frames, _, cached = generate(
            pipe,
            image,
            prompt="a lighthouse",
            negative_prompt=None,
            width=64,
            height=32,
            frames=model.min_frames,
            steps=2,
            guidance_scale=model.guidance_scale or 1.0,
            seed=seed,
            fps=model.fps,
            progress=lambda step, total: None,
            cache_threshold=step_cache,
        )
        assert (cached is None) == (step_cache is None)
        return frames

    first = run(3)
    assert first.shape == (model.min_frames, 32, 64, 3)
    assert np.array_equal(first, run(3))
    # step_cache where the server takes it (with optimize_low_vram too, but for Wan's layers)
    if model.step_cache and not (low_vram and model.offload_layers):
        cached = run(3, step_cache=1.0)
        assert np.array_equal(cached, run(3, step_cache=1.0))
        assert np.array_equal(first, run(3))


@pytest.mark.parametrize("model", ["ltx-video", "wan-2.1"])
def test_through_the_server_with_the_default_compile(make_settings, workspace: Path, model: str):
    """The server's defaults on CUDA (DD_COMPILE=auto: the transformer's blocks compiled):
    a job succeeds, and the same seed gives the same frames again; with step_cache around
    the compiled blocks too, and a plain request after it gives the same frames again."""
    from fastapi.testclient import TestClient

    from api.common.video import decode_mp4
    from api.main import create_app
    from api.tests.conftest import write_image

    plate = write_image(workspace / "plate.png", (96, 64))
    body = {"model": model, "prompt": "x", "input_image_path": str(plate), "seed": 2}
    with TestClient(create_app(make_settings(), devices=[DEVICE])) as client:
        bodies = [body, body, body | {"step_cache": 1.0}, body]
        jobs = [client.post("/api/videos?wait=600", json=b).json() for b in bodies]
        for job in jobs:
            assert job["status"] == "succeeded", job["error"]
        frames = [decode_mp4(client.get(job["result"]["video"]["url"]).content) for job in jobs]
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], frames[3])
    assert jobs[2]["result"]["step_cache"]["calls"] > 0
