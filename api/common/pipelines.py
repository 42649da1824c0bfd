"""Loading a diffusers pipeline straight onto one GPU of several, and making it fast there
(``speed_up``), for every domain's models.

``DiffusionPipeline.from_pretrained`` takes ``device_map="cuda"`` (not "cuda:1"): diffusers'
own models go to the thread's current CUDA device, but transformers turns "cuda" into
``cuda:$LOCAL_RANK``, i.e. cuda:0, so a pipeline loaded for cuda:1 would keep its text
encoders on cuda:0. The transformers components are therefore loaded first, each with an
explicit ``device_map``, and handed to the pipeline, which loads the rest.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger("api.speed")

# How results name a denoiser's dtype (as DD_PRECISION does).
PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class Speed:
    """How diffusion pipelines run on CUDA (DD_COMPILE, DD_CHANNELS_LAST, DD_PRECISION=fp8).

    compile: ``auto`` = ``full`` where Triton is installed, else ``off``; ``full`` compiles
    the whole image denoiser and the VAE decoder (fastest once warm; minutes on a model's
    first request, then kept on disk; see CompileBudget); ``regional`` compiles only the
    repeated transformer blocks (a first request of seconds, not minutes).
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
    """``auto`` becomes ``full`` where Triton (torch.compile's GPU backend) is installed (the
    image models compiled whole, with CompileBudget; video models compile their blocks)."""
    if speed.compile != "auto":
        return speed.compile
    return "full" if importlib.util.find_spec("triton") is not None else "off"


# A model compiled whole compiles a static graph for each of its first plain requests'
# sizes, this many at most (each takes minutes the first time, ~20 s from the disk cache).
FULL_COMPILES = 2

# Modules compiled whole (Module.compile) all share one Dynamo cache, that of nn.Module's
# call, whose default limit (8 graphs) would fail the ninth under fullgraph: a third model
# at two sizes (a denoiser and a VAE decoder each). CompileBudget bounds each model's
# graphs; this bounds them all (and a text model's decoding graphs, one per cache length).
COMPILED_GRAPHS = 256


class CompileBudget:
    """When a model compiled whole (``full``) may compile again: only for plain requests
    (no LoRAs, ControlNets or IP-Adapters), FULL_COMPILES times. Any other call runs the
    compiled code where its guards hold and eagerly where they don't, instead of stopping
    for minutes to compile a graph for one request (a LoRA, a ControlNet, a third size).
    Other modes compile as torch.compile does (regional blocks recompile in seconds).
    One budget per model and device in a process (``of``): Dynamo keeps a model's graphs
    when it is unloaded, and uses them again when it is loaded again, so its count outlives
    a load."""

    _of_model: ClassVar[dict[tuple[str, str], CompileBudget]] = {}

    def __init__(self, mode: str) -> None:
        self.full = mode == "full"
        self.compiles = 0

    @classmethod
    def of(cls, model: str, device: str, mode: str) -> CompileBudget:
        """The budget of ``model`` (its name) on ``device`` in this process, in ``mode``."""
        budget = cls._of_model.get((model, device))
        if budget is None or budget.full != (mode == "full"):
            budget = cls._of_model[model, device] = cls(mode)
        return budget

    @contextlib.contextmanager
    def calling(self, plain: bool) -> Iterator[None]:
        if not self.full:
            yield
            return
        import torch
        from torch._dynamo.utils import counters

        if plain and self.compiles < FULL_COMPILES:
            before = counters["stats"]["unique_graphs"]
            yield
            if counters["stats"]["unique_graphs"] > before:
                self.compiles += 1
            return
        with torch.compiler.set_stance("eager_on_recompile"):
            yield


@dataclass
class StepCacheCount:
    """A step cache's decisions in one pipeline call: denoiser calls, and those that reused
    the cached blocks."""

    threshold: float
    calls: int = 0
    reused: int = 0


@contextlib.contextmanager
def step_cache(transformer: Any, threshold: float | None) -> Iterator[StepCacheCount | None]:
    """First Block Cache (diffusers' ``FirstBlockCacheConfig``) on ``transformer`` for the
    calls inside, counted; removed afterwards, so that a call without it runs exactly as
    before. Nothing (None) without a threshold. The pipeline must name its denoiser calls
    (``cache_context``), as the video pipelines that take it do. The hooks wrap the blocks'
    ``forward``: blocks compiled by ``compile_blocks`` keep their compiled code inside."""
    if not threshold:
        yield None
        return
    from diffusers.hooks import FirstBlockCacheConfig
    from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

    count = StepCacheCount(threshold)
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    try:
        (head,) = (
            hook
            for module in transformer.modules()
            if (hook := getattr(module, "_diffusers_hook", None)) is not None
            and (hook := hook.get_hook(_FBC_LEADER_BLOCK_HOOK)) is not None
        )
        decide = head._should_compute_remaining_blocks

        def counted(residual: Any) -> bool:
            compute = bool(decide(residual))
            count.calls += 1
            count.reused += not compute
            return compute

        head._should_compute_remaining_blocks = counted
        yield count
    finally:
        transformer.disable_cache()  # its hooks and their state go


def compile_blocks(denoiser: Any) -> None:
    """Regional compilation: each repeated block's ``forward`` compiled (one graph for all
    of them), as diffusers' ``compile_repeated_blocks`` does with ``Module.compile``, but on
    ``forward``, so that hooks (``step_cache``) can wrap the compiled code."""
    import torch

    for module in denoiser.modules():
        if type(module).__name__ in denoiser._repeated_blocks:
            module.forward = torch.compile(module.forward, fullgraph=True)


def allow_compiled_graphs() -> None:
    """Room in Dynamo's caches for every model's graphs (COMPILED_GRAPHS), not its default 8
    per compiled function, past which it fails a fullgraph compile or runs eagerly."""
    import torch._dynamo.config

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, COMPILED_GRAPHS)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, COMPILED_GRAPHS)


def compile_whole(module: Any) -> None:
    """``module`` compiled whole: one static graph per input shape (each size its own graph,
    so a size always runs the same kernels: no switch to a dynamic graph at the second size,
    which would round apart), room for every model's graphs."""
    allow_compiled_graphs()
    module.compile(fullgraph=True, dynamic=False)


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
            compile_blocks(denoiser)
        else:
            compile_whole(denoiser)
            if mode == "full":
                compile_whole(pipe.vae.decoder)
    log.info(
        "%s: compile=%s channels_last=%s fp8=%s",
        type(pipe).__name__,
        mode,
        speed.channels_last,
        speed.fp8,
    )
