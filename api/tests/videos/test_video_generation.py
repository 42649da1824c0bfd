"""Each local video model × mode on its tiny weights, through the same load and generate as
real weights: 2 steps at the smallest valid frame count and a small size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from api.common.models import Weights
from api.videos.models.diffusion import LoadedVideoModel, generate, load
from api.videos.registry import VIDEO_MODELS, VideoMode, video_size

CASES = [
    (name, mode)
    for name, model in VIDEO_MODELS.items()
    if not model.external
    for mode in sorted(model.modes)
]
STEPS = 2


class Cancelled(Exception):
    pass


@pytest.fixture(scope="module")
def loaded(tiny_video_models: Path) -> dict[str, LoadedVideoModel]:
    """Each tiny model loaded on the CPU once for this module."""
    return {
        name: load(
            VIDEO_MODELS[name],
            Weights("models_dir", str(tiny_video_models / name), tiny=True),
            "cpu",
            low_vram=False,
        )
        for name in {name for name, _ in CASES}
    }


@pytest.fixture(scope="module")
def plate() -> Image.Image:
    """A 2:1 input, larger than the output: generate resizes it."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 96)[None, :, None]
    y = np.linspace(0, 255, 48)[:, None, None]
    pixels = (x * 0.6 + y * 0.4 + rng.uniform(0, 20, (48, 96, 3))).clip(0, 255)
    return Image.fromarray(pixels.astype("uint8"))


def _bounds(mode: VideoMode) -> tuple[int, int]:
    """image→video: 64x64 bounds around the 2:1 plate; text→video: the bounds themselves."""
    return (64, 64) if mode == VideoMode.image_to_video else (64, 32)


def _run(loaded, plate, name: str, mode: VideoMode, seed: int, progress=lambda s, t: None):
    model = VIDEO_MODELS[name]
    image = plate if mode == VideoMode.image_to_video else None
    width, height = video_size(model, *_bounds(mode), None if image is None else image.size)
    frames, timings = generate(
        loaded[name].pipeline(mode),
        image,
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=width,
        height=height,
        frames=model.min_frames,
        steps=STEPS,
        guidance_scale=model.guidance_scale or 1.0,
        seed=seed,
        fps=model.fps,
        progress=progress,
    )
    return frames, timings, (width, height)


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_generates_the_requested_frames_and_stops_when_progress_raises(
    loaded, plate, name, mode
) -> None:
    calls: list[tuple[int, int]] = []
    frames, timings, (width, height) = _run(
        loaded, plate, name, mode, seed=7, progress=lambda step, total: calls.append((step, total))
    )
    assert (width, height) == (64, 32)  # the plate's 2:1 in 64x64 (text→video: the bounds)
    assert frames.dtype == np.uint8
    assert frames.shape == (VIDEO_MODELS[name].min_frames, height, width, 3)
    assert frames.std() > 0  # not a blank video
    assert calls == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert timings["inference_s"] > 0

    def cancel(step: int, total: int) -> None:
        calls.append((step, total))
        raise Cancelled

    calls.clear()
    with pytest.raises(Cancelled):
        _run(loaded, plate, name, mode, seed=7, progress=cancel)
    assert calls == [(1, STEPS)]  # stopped after the first step

    # The same seed gives the same frames (the cancelled run left nothing behind), another
    # seed other frames.
    again, _, _ = _run(loaded, plate, name, mode, seed=7)
    other, _, _ = _run(loaded, plate, name, mode, seed=8)
    assert np.array_equal(frames, again)
    assert not np.array_equal(frames, other)


def test_image_to_video_shares_the_text_to_video_weights_in_their_dtype(
    tiny_video_models: Path,
) -> None:
    ltx = load(
        VIDEO_MODELS["ltx-video"],
        Weights("models_dir", str(tiny_video_models / "ltx-video"), tiny=True),
        "cpu",
        low_vram=False,
        dtype=torch.bfloat16,
    )
    text = ltx.pipeline(VideoMode.text_to_video)
    image = ltx.pipeline(VideoMode.image_to_video)
    assert image is ltx.pipeline(VideoMode.image_to_video)
    assert image.transformer is text.transformer and image.vae is text.vae
    assert image.scheduler is not text.scheduler
    assert {text.transformer.dtype, text.text_encoder.dtype, text.vae.dtype} == {torch.bfloat16}


def test_wan_keeps_its_vae_and_image_encoder_in_float32(tiny_video_models: Path) -> None:
    wan = load(
        VIDEO_MODELS["wan-2.1"],
        Weights("models_dir", str(tiny_video_models / "wan-2.1"), tiny=True),
        "cpu",
        low_vram=False,
        dtype=torch.bfloat16,
    )
    pipe = wan.pipeline(VideoMode.image_to_video)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == pipe.image_encoder.dtype == torch.float32
