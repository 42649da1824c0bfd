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


def _run(
    loaded,
    plate,
    name: str,
    mode: VideoMode,
    seed: int,
    progress=lambda s, t: None,
    steps: int = STEPS,
    step_cache: float | None = None,
):
    model = VIDEO_MODELS[name]
    image = plate if mode == VideoMode.image_to_video else None
    width, height = video_size(model, *_bounds(mode), None if image is None else image.size)
    frames, timings, cached = generate(
        loaded[name].pipeline(mode),
        image,
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=width,
        height=height,
        frames=model.min_frames,
        steps=steps,
        guidance_scale=model.guidance_scale or 1.0,
        seed=seed,
        fps=model.fps,
        progress=progress,
        cache_threshold=step_cache,
    )
    return frames, timings, (width, height), cached


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_generates_the_requested_frames_and_stops_when_progress_raises(
    loaded, plate, name, mode
) -> None:
    calls: list[tuple[int, int]] = []
    frames, timings, (width, height), cached = _run(
        loaded, plate, name, mode, seed=7, progress=lambda step, total: calls.append((step, total))
    )
    assert (width, height) == (64, 32)  # the plate's 2:1 in 64x64 (text→video: the bounds)
    assert frames.dtype == np.uint8
    assert frames.shape == (VIDEO_MODELS[name].min_frames, height, width, 3)
    assert frames.std() > 0  # not a blank video
    assert calls == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert timings["inference_s"] > 0
    assert cached is None  # no step_cache asked

    def cancel(step: int, total: int) -> None:
        calls.append((step, total))
        raise Cancelled

    calls.clear()
    with pytest.raises(Cancelled):
        _run(loaded, plate, name, mode, seed=7, progress=cancel)
    assert calls == [(1, STEPS)]  # stopped after the first step

    # The same seed gives the same frames (the cancelled run left nothing behind), another
    # seed other frames.
    again, *_ = _run(loaded, plate, name, mode, seed=7)
    other, *_ = _run(loaded, plate, name, mode, seed=8)
    assert np.array_equal(frames, again)
    assert not np.array_equal(frames, other)


CACHED = [(name, mode) for name, mode in CASES if VIDEO_MODELS[name].step_cache]
CACHED_STEPS = 6


def _calls_a_step(name: str) -> int:
    """Wan calls its transformer twice a step (with and without the prompt); LTX-Video and
    CogVideoX batch the two."""
    return 2 if VIDEO_MODELS[name].family == "wan" else 1


@pytest.mark.parametrize(("name", "mode"), CACHED, ids=[f"{n}-{m}" for n, m in CACHED])
def test_step_cache_reuses_blocks_and_leaves_nothing_behind(loaded, plate, name, mode) -> None:
    """step_cache skips the transformer's later blocks on some calls (counted), changes the
    frames, gives the same frames again; a cancelled cached run and the cache itself leave
    nothing behind: a run without it gives the frames it gave before."""
    plain, *_ = _run(loaded, plate, name, mode, seed=5, steps=CACHED_STEPS)
    cached, _, _, report = _run(loaded, plate, name, mode, 5, steps=CACHED_STEPS, step_cache=1.0)
    assert report is not None and report.threshold == 1.0
    assert report.calls == CACHED_STEPS * _calls_a_step(name)
    assert 0 < report.reused < report.calls  # the first call of each kind always computes
    assert not np.array_equal(cached, plain)

    def cancel(step: int, total: int) -> None:
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        _run(loaded, plate, name, mode, 5, cancel, steps=CACHED_STEPS, step_cache=1.0)
    again, _, _, report_again = _run(
        loaded, plate, name, mode, 5, steps=CACHED_STEPS, step_cache=1.0
    )
    assert np.array_equal(again, cached) and report_again == report
    after, *_ = _run(loaded, plate, name, mode, seed=5, steps=CACHED_STEPS)
    assert np.array_equal(after, plain)


def test_step_cache_wraps_the_compiled_blocks(tiny_video_models: Path, plate) -> None:
    """Regional compilation (compile_blocks, as DD_COMPILE does on CUDA) compiles the blocks'
    forward, one graph for all; step_cache then runs around the compiled code without
    compiling again, with the frames it gives eager, and leaves the compiled blocks as they
    were."""
    from torch._dynamo.utils import counters

    from api.common.pipelines import compile_blocks

    model = load(
        VIDEO_MODELS["wan-2.1"],
        Weights("models_dir", str(tiny_video_models / "wan-2.1"), tiny=True),
        "cpu",
        low_vram=False,
    )
    loaded = {"wan-2.1": model}
    mode = VideoMode.image_to_video
    transformer = model.pipeline(mode).transformer
    eager, *_ = _run(loaded, plate, "wan-2.1", mode, 5, steps=4)
    eager_cached, _, _, eager_report = _run(
        loaded, plate, "wan-2.1", mode, 5, steps=4, step_cache=1.0
    )
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    compile_blocks(transformer)
    compiled, *_ = _run(loaded, plate, "wan-2.1", mode, 5, steps=4)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs - before == 1  # both blocks share one graph
    cached, _, _, report = _run(loaded, plate, "wan-2.1", mode, 5, steps=4, step_cache=1.0)
    after, *_ = _run(loaded, plate, "wan-2.1", mode, 5, steps=4)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled again
    assert all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in transformer.blocks)
    assert report == eager_report and report is not None and report.reused > 0
    assert np.array_equal(after, compiled)
    # compiled kernels round apart from eager ones, by a level at most
    for frames, reference in ((compiled, eager), (cached, eager_cached)):
        assert np.abs(frames.astype(int) - reference).max() <= 2


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
