"""Making a resident diffusion pipeline fast on CUDA: channels-last memory layout and
``torch.compile`` of the denoiser (and the VAE decoder). Outputs stay deterministic for a
given setting; the compiled artifacts are cached on disk (DD_COMPILE_CACHE_DIR)."""

from __future__ import annotations

import importlib.util
import logging

import torch
from diffusers import DiffusionPipeline

from api.images.settings import Speed

log = logging.getLogger("api.speed")


def compile_mode(speed: Speed) -> str:
    """``auto`` becomes ``regional`` where Triton (torch.compile's GPU backend) is installed:
    most of ``full``'s gain for a tenth of its first-request cost (bench/README.md)."""
    if speed.compile != "auto":
        return speed.compile
    return "regional" if importlib.util.find_spec("triton") is not None else "off"


def speed_up(pipe: DiffusionPipeline, speed: Speed) -> None:
    """Tune a pipeline that lives on the GPU, in place (its from_pipe siblings share it)."""
    unet = getattr(pipe, "unet", None)
    denoiser = unet or getattr(pipe, "transformer", None)
    if speed.channels_last:
        for module in (m for m in (unet, pipe.vae) if m is not None):
            module.to(memory_format=torch.channels_last)
    mode = compile_mode(speed)
    if mode in ("full", "regional"):
        if denoiser is None:
            raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer")
        if mode == "regional" and getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(fullgraph=True)
        else:
            denoiser.compile(fullgraph=True)
            if mode == "full":
                pipe.vae.decoder.compile(fullgraph=True)
    log.info("%s: compile=%s channels_last=%s", type(pipe).__name__, mode, speed.channels_last)
