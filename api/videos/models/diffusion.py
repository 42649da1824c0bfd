"""The local video families (Stable Video Diffusion, CogVideoX, LTX-Video, Wan): load once,
then image→video (or text→video) through diffusers' own pipelines."""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    CogVideoXImageToVideoPipeline,
    DiffusionPipeline,
    LTXImageToVideoPipeline,
    LTXPipeline,
    StableVideoDiffusionPipeline,
    WanImageToVideoPipeline,
)
from PIL import Image

from api.common.models import CacheKey, Weights
from api.common.pipelines import (
    Speed,
    StepCacheCount,
    compile_blocks,
    compile_mode,
    load_pipeline,
    precision_of,
    step_cache,
    use_fp8,
)
from api.common.runtime import ModelRuntime
from api.videos.context import Clip, VideoContext
from api.videos.registry import VideoMode, VideoModel
from api.videos.schemas import StepCacheReport

Progress = Callable[[int, int], None]

# SVD decodes this many frames at a time (diffusers' SVD guide): all 25 at once needs several
# times the memory for little gain.
SVD_DECODE_CHUNK_FRAMES = 8


@dataclass(frozen=True)
class Family:
    """How a family loads: its pipeline class per mode (the first loads the weights, the
    others share its components) and the components kept in float32 on the GPU (as
    diffusers' docs load them). (Whether optimize_low_vram offloads layers rather than whole
    models is the registry's ``offload_layers``.)"""

    pipelines: dict[VideoMode, type[DiffusionPipeline]]
    float32: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "svd": Family({VideoMode.image_to_video: StableVideoDiffusionPipeline}),
    "cogvideox": Family({VideoMode.image_to_video: CogVideoXImageToVideoPipeline}),
    "ltx": Family(
        {VideoMode.text_to_video: LTXPipeline, VideoMode.image_to_video: LTXImageToVideoPipeline}
    ),
    # Wan 2.1 I2V 14B: a 14 B transformer (28 GB in bf16) plus UMT5-XXL (11 GB). diffusers'
    # Wan docs load the VAE and the CLIP image encoder in float32.
    "wan": Family(
        {VideoMode.image_to_video: WanImageToVideoPipeline},
        float32=("vae", "image_encoder"),
    ),
}


@dataclass
class LoadedVideoModel:
    """One model's pipeline, and the other modes' pipelines sharing its components."""

    base: DiffusionPipeline
    family: Family
    device: str
    low_vram: bool
    pipelines: dict[VideoMode, DiffusionPipeline] = field(default_factory=dict)

    def pipeline(self, mode: VideoMode) -> DiffusionPipeline:
        """The mode's pipeline (LTX: text→video loads, image→video shares its components),
        with a scheduler of its own: schedulers keep state between calls. (from_pipe casts
        every shared component to ``dtype``, float32 unless told.)"""
        if mode not in self.pipelines:
            scheduler = type(self.base.scheduler).from_config(self.base.scheduler.config)
            pipe = self.family.pipelines[mode].from_pipe(
                self.base, scheduler=scheduler, dtype=self.base.dtype
            )
            if self.low_vram:
                pipe.enable_model_cpu_offload(device=self.device)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[mode] = pipe
        return self.pipelines[mode]


def default_dtype(device: str) -> torch.dtype:
    """float32 on the CPU; bf16 on GPUs that have it (what these models were trained in),
    else fp16."""
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load(
    model: VideoModel,
    weights: Weights,
    device: str,
    low_vram: bool,
    dtype: torch.dtype | None = None,
    speed: Speed | None = None,
) -> LoadedVideoModel:
    """``from_pretrained`` exactly as for downloaded weights. On CUDA: straight onto the device
    (or, with ``low_vram``, offloaded to the CPU: whole models, or groups of layers for Wan),
    VAE tiling and slicing on where the VAE has them; resident, ``speed``'s FP8 linears and
    compilation. Call inside ``common.models.building_models(device)`` (``ModelCache.get``
    does)."""
    family = FAMILIES[model.family]
    on_gpu = device.startswith("cuda")
    kwargs: dict[str, Any] = {"dtype": dtype or default_dtype(device)}
    if on_gpu and _has_variant(model, weights):
        kwargs["variant"] = model.variant  # half the bytes to read (or download)
    resident = on_gpu and not low_vram
    for name in family.float32:
        kwargs[name] = _load_float32(weights.location, name, device if resident else None)
    if resident:
        kwargs["device_map"] = "cuda"
    base_mode, base_class = next(iter(family.pipelines.items()))
    pipe = load_pipeline(base_class, weights.location, device, **kwargs)
    if on_gpu:
        for feature in ("tiling", "slicing"):  # only VAEs that implement it have the switch
            if hasattr(pipe.vae, f"use_{feature}"):
                getattr(pipe.vae, f"enable_{feature}")()
    if on_gpu and low_vram and model.offload_layers:
        # Layer by layer, the next one copied in while the current one runs (diffusers'
        # memory guide for Wan 14B); the small VAE stays on the GPU.
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_type="leaf_level",
            use_stream=True,
            exclude_modules=["vae"],
        )
    elif on_gpu and low_vram:
        pipe.enable_model_cpu_offload(device=device)
    elif on_gpu and speed is not None:
        if speed.fp8:
            use_fp8(pipe)
        compile_transformer_blocks(pipe, speed)
    pipe.set_progress_bar_config(disable=True)
    return LoadedVideoModel(pipe, family, device, low_vram, {base_mode: pipe})


def compile_transformer_blocks(pipe: DiffusionPipeline, speed: Speed) -> None:
    """DD_COMPILE for the video transformers that name their repeated blocks (LTX-Video, Wan):
    those blocks compiled (regional; ``full`` compiles the same here: a whole video
    transformer would recompile for every frame count, and step_cache wraps the blocks).
    Others run eager."""
    transformer = getattr(pipe, "transformer", None)
    if (
        transformer is not None
        and compile_mode(speed) != "off"
        and getattr(transformer, "_repeated_blocks", None)
    ):
        compile_blocks(transformer)


def _has_variant(model: VideoModel, weights: Weights) -> bool:
    """Whether to load the repo's half-precision files: a download fetches only those; a local
    copy uses them where it has them (a full-precision-only copy loads as it is)."""
    if model.variant is None:
        return False
    if weights.source == "download":
        return True
    return any(Path(weights.location).glob(f"*/*.{model.variant}.safetensors"))


def _load_float32(location: str, name: str, device: str | None) -> Any:
    """The pipeline component ``name`` (its class from model_index.json) in float32, on
    ``device`` (None: left on the CPU, for the CPU or for the offloading to place)."""
    library, class_name = DiffusionPipeline.load_config(location)[name]
    component_class = getattr(importlib.import_module(library), class_name)
    component = component_class.from_pretrained(location, subfolder=name, dtype=torch.float32)
    return component if device is None else component.to(device)


def generate(
    pipe: DiffusionPipeline,
    image: Image.Image | None,
    prompt: str,
    negative_prompt: str | None,
    width: int,
    height: int,
    frames: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    fps: float,
    progress: Progress,
    cache_threshold: float | None = None,
) -> tuple[np.ndarray, dict[str, float], StepCacheCount | None]:
    """Run the pipeline: image→video from ``image`` (resized to width x height), text→video
    without one. ``frames`` must be a valid count for the model (registry.valid_frames).
    ``progress(step, total)`` is called after each denoising step; an exception it raises
    (a cancelled job) stops the run and propagates. ``cache_threshold``: step_cache on the
    transformer for this call. Returns the frames as uint8 RGB (frames, height, width, 3),
    the timings and what the step cache did."""
    started = time.perf_counter()
    accepted = inspect.signature(pipe.__call__).parameters

    def on_step_end(pipeline: DiffusionPipeline, step: int, timestep: Any, tensors: dict) -> dict:
        progress(step + 1, pipeline.num_timesteps)
        return tensors

    arguments: dict[str, Any] = {
        "width": width,
        "height": height,
        "num_frames": frames,
        "num_inference_steps": steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "callback_on_step_end": on_step_end,
        "output_type": "pt",  # to 8 bits where the frames are (the GPU), not in numpy
    }
    if image is not None:
        image = image.convert("RGB")
        arguments["image"] = (
            image
            if image.size == (width, height)
            else image.resize((width, height), Image.Resampling.LANCZOS)
        )
    if "prompt" in accepted:  # SVD takes none
        arguments.update(prompt=prompt, negative_prompt=negative_prompt or None)
    # SVD ramps its guidance from 1 on the first frame to max_guidance_scale on the last.
    guidance = "guidance_scale" if "guidance_scale" in accepted else "max_guidance_scale"
    arguments[guidance] = guidance_scale
    for rate in ("fps", "frame_rate"):  # SVD and LTX are conditioned on the frame rate
        if rate in accepted:
            arguments[rate] = fps
    if "decode_chunk_size" in accepted:
        arguments["decode_chunk_size"] = SVD_DECODE_CHUNK_FRAMES
    with step_cache(getattr(pipe, "transformer", None), cache_threshold) as cached:
        video = pipe(**arguments).frames[0]  # (frames, channels, height, width) in [0, 1]
    pixels = (video.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return pixels, {"inference_s": time.perf_counter() - started}, cached


def run(ctx: VideoContext, runtime: ModelRuntime) -> tuple[Clip, dict[str, float]]:
    """Run a job's local video model: loaded once per device and kept, then its mode."""
    started = time.perf_counter()
    request = ctx.request
    weights = runtime.weights(ctx.model.name, ctx.model.repo)
    low_vram = request.optimize_low_vram and runtime.on_gpu
    settings = runtime.services.settings
    loaded = runtime.resident(
        CacheKey(ctx.model.name, offloaded=low_vram),
        lambda: load(ctx.model, weights, runtime.device, low_vram, runtime.dtype, settings.speed),
        weights,
    )
    pipe = loaded.pipeline(ctx.mode)
    runtime.precision = precision_of(pipe)
    loaded_at = time.perf_counter()
    assert request.num_inference_steps is not None and request.guidance_scale is not None
    frames, timings, cached = generate(
        pipe,
        ctx.image,
        request.prompt,
        request.negative_prompt,
        ctx.width,
        ctx.height,
        ctx.frames,
        request.num_inference_steps,
        request.guidance_scale,
        ctx.seed,
        ctx.fps,
        runtime.progress,
        request.step_cache,
    )
    report = None if cached is None else StepCacheReport(**vars(cached))
    return Clip(frames=frames, step_cache=report), {"load_s": loaded_at - started} | timings
