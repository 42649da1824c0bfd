"""CUDA paths of the video models on their tiny weights: bf16 straight onto the GPU, VAE
tiling, Wan's float32 VAE and image encoder, and optimize_low_vram (model offload; group
offload for Wan)."""

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

    def run(seed: int) -> np.ndarray:
        frames, _ = generate(
            pipe,
            image,
            prompt="a lighthouse",
            negative_prompt=None,
            width=64,
            height=32,
            frames=model.min_frames,
            steps=2,
            guidance_scale=model.guidance_scale,
            seed=seed,
            fps=model.fps,
            progress=lambda step, total: None,
        )
        return frames

    first = run(3)
    assert first.shape == (model.min_frames, 32, 64, 3)
    assert np.array_equal(first, run(3))
