"""Loading a diffusers pipeline straight onto one GPU of several, and making it fast there
(``speed_up``), for every domain's models.

``DiffusionPipeline.from_pretrained`` takes ``device_map="cuda"`` (not "cuda:1"): diffusers'
own models go to the thread's current CUDA device, but transformers turns "cuda" into
``cuda:$LOCAL_RANK``, i.e. cuda:0, so a pipeline loaded for cuda:1 would keep its text
encoders on cuda:0. The transformers components are therefore loaded first, each with an
explicit ``device_map``, and handed to the pipeline, which loads the rest.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("api.speed")

# How results name a denoiser's dtype (as DD_PRECISION does).
PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class Speed:
    """How diffusion pipelines run on CUDA (DD_COMPILE, DD_CHANNELS_LAST, DD_PRECISION=fp8).

    compile: ``auto`` = ``regional`` where Triton is installed, else ``off``; ``regional``
    compiles only the repeated transformer blocks (a first request of seconds, not minutes);
    ``full`` compiles the whole denoiser and the VAE decoder (fastest once warm).
    fp8: the denoiser's linear layers compute in FP8 (api.common.fp8; changes the pixels).
    """

    compile: str = "off"
    channels_last: bool = False
    fp8: bool = False


def load_pipeline(pipeline_class: Any, location: str, device: str, **kwargs: Any) -> Any:
    """``pipeline_class.from_pretrained(location, **kwargs)``, every component on ``device``
    when ``kwargs`` has ``device_map="cuda"``. Call it inside ``building_models(device)``."""
    if kwargs.get("device_map") == "cuda":
        kwargs = kwargs | transformers_components(location, device, kwargs)
    return pipeline_class.from_pretrained(location, **kwargs)


def transformers_components(location: str, device: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's transformers models (text and image encoders; not tokenizers or
    processors) from its ``model_index.json``, loaded onto ``device``; those already given
    in ``kwargs`` (e.g. ``safety_checker=None``) are left alone."""
    import transformers
    from diffusers import DiffusionPipeline

    components = {}
    for name, entry in DiffusionPipeline.load_config(location).items():
        if name.startswith("_") or name in kwargs or not isinstance(entry, list | tuple):
            continue
        library, class_name = entry
        model_class = getattr(transformers, class_name or "", None)
        if library != "transformers" or not (
            isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)
        ):
            continue
        variant = kwargs.get("variant")
        if variant and Path(location).is_dir():  # a local copy: only where it has the files
            variant = variant if any(Path(location, name).glob(f"*.{variant}.*")) else None
        components[name] = model_class.from_pretrained(
            location,
            subfolder=name,
            dtype=kwargs.get("dtype"),
            variant=variant,
            device_map={"": device},
        )
    return components


def compile_mode(speed: Speed) -> str:
    """``auto`` becomes ``regional`` where Triton (torch.compile's GPU backend) is installed:
    most of ``full``'s gain for a tenth of its first-request cost (bench/README.md)."""
    if speed.compile != "auto":
        return speed.compile
    return "regional" if importlib.util.find_spec("triton") is not None else "off"


def denoiser_of(pipe: Any) -> Any:
    """The pipeline's denoiser: its UNet or its transformer."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if denoiser is None:
        raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return denoiser


def use_fp8(pipe: Any) -> None:
    """DD_PRECISION=fp8: the denoiser's linear layers to FP8 (before compiling it)."""
    from api.common.fp8 import use_fp8_linears

    count = use_fp8_linears(denoiser_of(pipe))
    log.info("%s: %d linear layers in FP8", type(pipe).__name__, count)


def precision_of(pipe: Any) -> str:
    """What the pipeline's denoiser computes in, for the job's result and metadata: fp8
    (its linear layers; the rest bf16), bf16, fp16 or fp32."""
    from api.common.fp8 import uses_fp8

    denoiser = denoiser_of(pipe)
    if uses_fp8(denoiser):
        return "fp8"
    name = str(denoiser.dtype).removeprefix("torch.")
    return PRECISION_NAMES.get(name, name)


def speed_up(pipe: Any, speed: Speed) -> None:
    """Tune a pipeline that lives on the GPU, in place (its from_pipe siblings share it)."""
    import torch

    unet = getattr(pipe, "unet", None)
    if speed.channels_last:
        for module in (m for m in (unet, pipe.vae) if m is not None):
            module.to(memory_format=torch.channels_last)
    if speed.fp8:
        use_fp8(pipe)
    mode = compile_mode(speed)
    if mode in ("full", "regional"):
        denoiser = denoiser_of(pipe)
        if mode == "regional" and getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(fullgraph=True)
        else:
            denoiser.compile(fullgraph=True)
            if mode == "full":
                pipe.vae.decoder.compile(fullgraph=True)
    log.info(
        "%s: compile=%s channels_last=%s fp8=%s",
        type(pipe).__name__,
        mode,
        speed.channels_last,
        speed.fp8,
    )
