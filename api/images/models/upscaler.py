"""The Stable Diffusion x4 upscaler: a prompt-guided 4x upscale of the input image.

The input is cut into overlapping tiles of the model's width x height (128 px in, 512 px out,
the crop size the model was trained at); each tile is upscaled on its own and the results are
cross-faded over the overlaps (weights ramp linearly from each tile's inner edges), so a 2K
plate needs no more memory than one tile and shows no seams. The result is exactly 4x the input.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionUpscalePipeline
from PIL import Image

from api.common.models import CacheKey, Weights
from api.common.pipelines import load_pipeline, precision_of
from api.common.runtime import ModelRuntime
from api.images.context import ImageContext, Picture
from api.images.registry import UPSCALE_FACTOR, UPSCALE_NOISE_LEVEL, UPSCALE_TILE_OVERLAP
from api.images.schemas import UpscaleRequest

# Tiles start on, and the padded input is a multiple of, this many input pixels: the UNet
# halves the latent three times, so no tile ever needs resizing inside the pipeline.
TILE_MULTIPLE = 8


def load_upscaler(weights: Weights, device: str, low_vram: bool) -> StableDiffusionUpscalePipeline:
    on_gpu = device.startswith("cuda")
    kwargs: dict[str, Any] = {"dtype": torch.float16 if on_gpu else torch.float32}
    if on_gpu and not low_vram:
        kwargs["device_map"] = "cuda"
    # ModelCache.get runs this in common.models.building_models: "cuda" is ``device`` here.
    if on_gpu:  # the VAE overflows in float16: the pipeline would upcast it for every tile
        kwargs["vae"] = AutoencoderKL.from_pretrained(
            weights.location, subfolder="vae", **(kwargs | {"dtype": torch.float32})
        )
    pipe = load_pipeline(StableDiffusionUpscalePipeline, weights.location, device, **kwargs)
    if on_gpu and low_vram:
        pipe.enable_model_cpu_offload(device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` pixels start to cover ``length`` pixels (both multiples of
    TILE_MULTIPLE), neighbours sharing about ``overlap`` pixels or more."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    return [round(last * i / (count - 1) / TILE_MULTIPLE) * TILE_MULTIPLE for i in range(count)]


def _ramp(size: int, fade: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """1 inside, rising over ``fade`` pixels from an edge shared with a neighbour (never 0)."""
    weights = np.ones(size, dtype=np.float32)
    fade = min(fade, size // 2)
    edge = (np.arange(fade, dtype=np.float32) + 0.5) / fade
    if fade_in:
        weights[:fade] = edge
    if fade_out:
        weights[size - fade :] = edge[::-1]
    return weights


def upscale(
    pipe: StableDiffusionUpscalePipeline,
    image: Image.Image,
    arguments: dict[str, Any],
    seed: int,
    tile: tuple[int, int],
    progress: Any,
) -> Image.Image:
    """``image`` upscaled 4x tile by tile; ``arguments`` go to every pipeline call."""
    width, height = image.size
    pad_w = -width % TILE_MULTIPLE
    pad_h = -height % TILE_MULTIPLE
    pixels = np.pad(np.asarray(image.convert("RGB")), ((0, pad_h), (0, pad_w), (0, 0)), "edge")
    padded_h, padded_w = pixels.shape[:2]
    tile_w, tile_h = min(tile[0], padded_w), min(tile[1], padded_h)
    xs = tile_starts(padded_w, tile_w, UPSCALE_TILE_OVERLAP)
    ys = tile_starts(padded_h, tile_h, UPSCALE_TILE_OVERLAP)
    tiles = [(x, y) for y in ys for x in xs]
    steps = arguments["num_inference_steps"]
    scale = UPSCALE_FACTOR
    fade = UPSCALE_TILE_OVERLAP * scale

    out = np.zeros((padded_h * scale, padded_w * scale, 3), dtype=np.float32)
    total_weight = np.zeros((padded_h * scale, padded_w * scale, 1), dtype=np.float32)
    for index, (x, y) in enumerate(tiles):
        done = index * steps

        def on_step(step: int, timestep: Any, latents: torch.Tensor, done: int = done) -> None:
            progress(done + step + 1, len(tiles) * steps)

        crop = Image.fromarray(pixels[y : y + tile_h, x : x + tile_w])
        result = pipe(
            image=crop,
            generator=torch.Generator("cpu").manual_seed(seed + index),
            callback=on_step,
            output_type="np",
            **arguments,
        ).images[0]
        weight = np.outer(
            _ramp(tile_h * scale, fade, y > 0, y + tile_h < padded_h),
            _ramp(tile_w * scale, fade, x > 0, x + tile_w < padded_w),
        )[..., None]
        window = np.s_[y * scale : (y + tile_h) * scale, x * scale : (x + tile_w) * scale]
        out[window] += result * weight
        total_weight[window] += weight
    out = out / total_weight
    out = out[: height * scale, : width * scale]
    return Image.fromarray((out * 255).round().clip(0, 255).astype(np.uint8))


def run(
    ctx: ImageContext[UpscaleRequest], runtime: ModelRuntime
) -> tuple[list[Picture], dict[str, float]]:
    """Upscale the request's input image 4x; returns it and the load/run timings."""
    assert ctx.image is not None  # a task's request requires its input image
    assert ctx.seed is not None  # validate_request filled it in (random when not given)
    started = time.perf_counter()
    device = runtime.device
    weights = runtime.weights(ctx.model.name, ctx.model.repo)
    low_vram = ctx.request.optimize_low_vram and runtime.on_gpu
    pipe = runtime.resident(
        CacheKey(ctx.model.name, offloaded=low_vram),
        lambda: load_upscaler(weights, device, low_vram),
        weights,
    )
    runtime.precision = precision_of(pipe)
    loaded_at = time.perf_counter()
    request = ctx.request
    arguments = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "noise_level": UPSCALE_NOISE_LEVEL,
    }
    image = upscale(
        pipe,
        ctx.image,
        arguments,
        ctx.seed,
        (ctx.model.width, ctx.model.height),
        runtime.progress,
    )
    finished = time.perf_counter()
    return [Picture(image)], {"load_s": loaded_at - started, "inference_s": finished - loaded_at}
