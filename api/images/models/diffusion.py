"""The diffusion families (SD 1.5, SDXL, SD3, FLUX): load once, then text→image,
image→image or inpainting from the same components."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)

from api.common.models import Weights, folder_size
from api.images.context import ImageContext, Picture, Runtime
from api.images.registry import ImageModel, Mode

AUTO_PIPELINES = {
    Mode.text_to_image: AutoPipelineForText2Image,
    Mode.image_to_image: AutoPipelineForImage2Image,
    Mode.inpainting: AutoPipelineForInpainting,
}

# Pixels of padding around the mask when inpainting a crop (inpainting_full_image=false).
MASK_CROP_PADDING = 32

Progress = Callable[[int, int], None]


def dtype_for(family: str, device: str) -> torch.dtype:
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if family in ("sd3", "flux") else torch.float16


@dataclass
class LoadedModel:
    """One model's pipeline, and the other modes' pipelines sharing its components."""

    base: DiffusionPipeline
    base_mode: Mode
    pipelines: dict[Mode, DiffusionPipeline] = field(default_factory=dict)

    def pipeline(self, mode: Mode) -> DiffusionPipeline:
        if mode not in self.pipelines:
            self.pipelines[mode] = AUTO_PIPELINES[mode].from_pipe(self.base)
        return self.pipelines[mode]


def load_model(model: ImageModel, weights: Weights, device: str, low_vram: bool) -> LoadedModel:
    """``from_pretrained`` exactly as for downloaded weights, straight onto the device."""
    base_mode = Mode.text_to_image if Mode.text_to_image in model.modes else Mode.image_to_image
    kwargs: dict[str, Any] = {"torch_dtype": dtype_for(model.family, device)}
    if model.family == "sd1.5":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    on_gpu = device.startswith("cuda")
    if on_gpu and not low_vram:
        kwargs["device_map"] = "cuda"
    with torch.cuda.device(device) if on_gpu else contextlib.nullcontext():
        pipe = AUTO_PIPELINES[base_mode].from_pretrained(weights.location, **kwargs)
        if on_gpu and low_vram:
            pipe.enable_model_cpu_offload(device=device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe, base_mode, {base_mode: pipe})


def _call_arguments(ctx: ImageContext, pipe: DiffusionPipeline, progress: Progress) -> dict:
    request = ctx.request
    steps = request.num_inference_steps

    def on_step_end(pipeline: DiffusionPipeline, step: int, timestep: Any, tensors: dict) -> dict:
        progress(step + 1, getattr(pipeline, "_num_timesteps", None) or steps)
        return tensors

    arguments: dict[str, Any] = {
        "prompt": request.prompt,
        "num_inference_steps": steps,
        "guidance_scale": request.guidance_scale,
        "width": ctx.width,
        "height": ctx.height,
        "generator": torch.Generator("cpu").manual_seed(ctx.seed),
        "callback_on_step_end": on_step_end,
        "output_type": "pil",
    }
    if ctx.model.negative_prompt:
        arguments["negative_prompt"] = request.negative_prompt or None
    if ctx.mode != Mode.text_to_image:
        arguments.update(image=ctx.image, strength=request.strength)
    if ctx.mode == Mode.inpainting:
        arguments["mask_image"] = ctx.mask
        if not request.inpainting_full_image:
            arguments["padding_mask_crop"] = MASK_CROP_PADDING
    accepted = inspect.signature(pipe.__call__).parameters
    return {name: value for name, value in arguments.items() if name in accepted}


def generate(ctx: ImageContext, runtime: Runtime) -> tuple[list[Picture], dict[str, float]]:
    """Run the request's mode on its model; returns the image and the load/run timings."""
    started = time.perf_counter()
    device = runtime.device
    weights = runtime.weights(ctx.model.name, ctx.model.repo)
    low_vram = ctx.request.optimize_low_vram and device.startswith("cuda")
    loaded = runtime.cache.get(
        (ctx.model.name, low_vram),
        lambda: load_model(ctx.model, weights, device, low_vram),
        needed_bytes=0 if low_vram else folder_size(weights.location),
        device=device,
    )
    pipe = loaded.pipeline(ctx.mode)
    loaded_at = time.perf_counter()
    output = pipe(**_call_arguments(ctx, pipe, runtime.progress))
    finished = time.perf_counter()
    timings = {"load_s": loaded_at - started, "inference_s": finished - loaded_at}
    return [Picture(output.images[0])], timings
