"""The diffusion families (SD 1.5, SDXL, SD3, FLUX): load once, then text→image,
image→image or inpainting from the same components, with ControlNets, IP-Adapters and
LoRAs."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    DiffusionPipeline,
    FluxControlNetModel,
    SD3ControlNetModel,
)
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from api.common.errors import JobFailure
from api.common.models import CacheKey, Weights, building_models
from api.common.pipelines import (
    CompileBudget,
    Speed,
    compile_mode,
    load_pipeline,
    precision_of,
    speed_up,
)
from api.common.runtime import ModelRuntime
from api.images.context import ImageContext, Picture
from api.images.loras import RequestLora, request_loras
from api.images.models.depth import estimate_depth
from api.images.registry import (
    CONTROLNETS,
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_WEIGHTS,
    IP_ADAPTERS,
    RESIDENT_LORAS,
    ControlNetKind,
    ImageModel,
    Mode,
    ScaleLayers,
)
from api.images.schemas import ImageRequest, IpAdapter
from api.images.settings import image_settings

AUTO_PIPELINES = {
    Mode.text_to_image: AutoPipelineForText2Image,
    Mode.image_to_image: AutoPipelineForImage2Image,
    Mode.inpainting: AutoPipelineForInpainting,
}

CONTROLNET_CLASSES = {
    "sd1.5": ControlNetModel,
    "sdxl": ControlNetModel,
    "sd3": SD3ControlNetModel,
    "flux": FluxControlNetModel,
}

# Pixels of padding around the mask when inpainting a crop (inpainting_full_image=false).
MASK_CROP_PADDING = 32

# Hysteresis thresholds of OpenCV's Canny for preprocess: true (as in diffusers' examples).
CANNY_THRESHOLDS = (100, 200)

Progress = Callable[[int, int], None]


class PromptCache:
    """A model's text-encoder outputs for its most recent prompts: ``encode_prompt`` of each
    of its pipelines answers a repeated call (same prompts, device, batch and guidance) from
    here, with copies of the tensors it returned the first time, so the pixels are the same.
    Calls with tensors among their arguments (precomputed embeddings) are not cached."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.loras = ""  # the LoRAs acting, at their scales: they may adapt the text encoders
        self._entries: OrderedDict[str, Any] = OrderedDict()

    def attach(self, pipe: DiffusionPipeline) -> DiffusionPipeline:
        encode = getattr(pipe, "encode_prompt", None)
        if self.size and callable(encode):
            pipe.encode_prompt = functools.partial(self._encode, encode)
        return pipe

    def _encode(self, encode: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        key = _prompt_key(args, kwargs)
        if key is None:
            return encode(*args, **kwargs)
        key += self.loras
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
        else:
            self._entries[key] = encode(*args, **kwargs)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return _copies(self._entries[key])


def _prompt_key(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """A call's arguments as a key, or None when one isn't plain data (a tensor)."""
    plain = (str, int, float, bool, type(None), torch.device, torch.dtype)

    def ok(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return all(ok(item) for item in value)
        return isinstance(value, plain)

    if not all(ok(value) for value in (*args, *kwargs.values())):
        return None
    return repr((args, sorted(kwargs.items())))


def _copies(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list | tuple):
        return type(value)(_copies(item) for item in value)
    return value


# A LoRA file as loaded: its path, modification time and size (a changed file loads anew).
LoraStamp = tuple[str, int, int]


@dataclass
class LoadedModel:
    """One model's pipeline, the other modes' pipelines sharing its components (and its
    prompt cache), and the LoRAs loaded into those components as named adapters (least
    recently used first)."""

    base: DiffusionPipeline
    base_mode: Mode
    device: str
    prompts: PromptCache
    compiling: CompileBudget
    pipelines: dict[Mode, DiffusionPipeline] = field(default_factory=dict)
    adapters: OrderedDict[LoraStamp, str] = field(default_factory=OrderedDict)
    adapters_made: int = 0  # adapter names are lora_<n>: never one used before

    def use_loras(self, loras: list[RequestLora]) -> None:
        """Make exactly ``loras`` act, at their scales, in every pipeline of the model (they
        share the denoiser and text encoders): each is loaded once (``load_lora_weights``
        as a named adapter), then switched on with ``set_adapters``; with none, the adapters
        are switched off and the model computes exactly what it did before any was loaded.
        Never fused: the weights stay as loaded."""
        active = [lora for lora in loras if lora.scale != 0]
        self.prompts.loras = ""
        if not active:
            if self.adapters:
                self.base.disable_lora()
            return
        names = [self._adapter(lora) for lora in active]
        for stamp in [s for s, name in self.adapters.items() if name not in names]:
            if len(self.adapters) <= RESIDENT_LORAS:
                break
            self._delete(stamp)
        scales = [lora.scale for lora in active]
        self.base.enable_lora()
        self.base.set_adapters(names, scales)
        self.prompts.loras = repr(list(zip(names, scales, strict=True)))

    def _adapter(self, lora: RequestLora) -> str:
        """The adapter name of a LoRA file, loading it the first time."""
        stat = lora.path.stat()
        stamp = (str(lora.path), stat.st_mtime_ns, stat.st_size)
        if stamp in self.adapters:
            self.adapters.move_to_end(stamp)
            return self.adapters[stamp]
        for changed in [s for s in self.adapters if s[0] == stamp[0]]:
            self._delete(changed)  # the file was replaced since it was loaded
        name = f"lora_{self.adapters_made}"
        self.adapters_made += 1
        try:
            with building_models(self.device):
                self.base.load_lora_weights(
                    str(lora.path.parent), weight_name=lora.path.name, adapter_name=name
                )
        except Exception as exc:
            with building_models(self.device), contextlib.suppress(Exception):
                self.base.delete_adapters(name)  # whatever part of it was loaded
            raise JobFailure(
                f"LoRA {lora.name!r} could not be loaded: {exc}",
                type="invalid_input",
            ) from exc
        self.adapters[stamp] = name
        return name

    def _delete(self, stamp: LoraStamp) -> None:
        with building_models(self.device):
            self.base.delete_adapters(self.adapters.pop(stamp))

    def release(self) -> None:
        """Unload the LoRAs (the model cache calls this when it unloads the model)."""
        if self.adapters:
            with building_models(self.device):
                self.base.unload_lora_weights()
            self.adapters.clear()

    def pipeline(self, mode: Mode, **components: Any) -> DiffusionPipeline:
        """The mode's pipeline. With extra components (``controlnet``, ``image_encoder``) a
        new one for this call, sharing the base's components (the kept ones stay as loaded).

        Each pipeline gets a scheduler of its own: schedulers keep state between calls (e.g.
        ``add_noise`` in image→image moves PNDM's tables to the GPU for good, which changes
        later text→image results on the GPU if the scheduler is shared).
        """
        if components:
            return self._derive(mode, components)
        if mode not in self.pipelines:
            self.pipelines[mode] = self._derive(mode, {})
        return self.pipelines[mode]

    def _derive(self, mode: Mode, components: dict[str, Any]) -> DiffusionPipeline:
        scheduler = type(self.base.scheduler).from_config(self.base.scheduler.config)
        pipe = AUTO_PIPELINES[mode].from_pipe(self.base, scheduler=scheduler, **components)
        return self.prompts.attach(pipe)

    def park(self) -> None:
        """Move the weights to host RAM (the ModelCache unloading it from a GPU): the
        modules, and their compiled code, stay as they are."""
        for module in self._modules():
            module.to("cpu")

    def unpark(self, device: str) -> None:
        """Back onto ``device`` after ``park``: the compiled code's guards hold again."""
        for module in self._modules():
            module.to(device)

    def _modules(self) -> list[torch.nn.Module]:
        return [c for c in self.base.components.values() if isinstance(c, torch.nn.Module)]


def load_model(
    model: ImageModel,
    weights: Weights,
    device: str,
    low_vram: bool,
    speed: Speed,
    dtype: torch.dtype,
    prompt_cache: int = 0,
) -> LoadedModel:
    """``from_pretrained`` exactly as for downloaded weights, straight onto the device, with
    a prompt cache of ``prompt_cache`` entries (DD_PROMPT_CACHE)."""
    base_mode = Mode.text_to_image if Mode.text_to_image in model.modes else Mode.image_to_image
    kwargs: dict[str, Any] = {"dtype": dtype}
    if model.family == "sd1.5":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    on_gpu = device.startswith("cuda")
    if on_gpu and has_variant(model, weights):
        kwargs["variant"] = model.variant  # half the bytes to read (or download)
    if on_gpu and not low_vram:
        kwargs["device_map"] = "cuda"
    # ModelCache.get runs this in common.models.building_models: "cuda" is ``device`` here.
    pipe = load_pipeline(AUTO_PIPELINES[base_mode], weights.location, device, **kwargs)
    if on_gpu and low_vram:
        pipe.enable_model_cpu_offload(device=device)
    elif on_gpu:
        speed_up(pipe, speed)
    pipe.set_progress_bar_config(disable=True)
    prompts = PromptCache(prompt_cache)
    compiling = CompileBudget.of(
        model.name, device, compile_mode(speed) if on_gpu and not low_vram else "off"
    )
    pipelines = {base_mode: prompts.attach(pipe)}
    return LoadedModel(pipe, base_mode, device, prompts, compiling, pipelines)


def has_variant(model: ImageModel, weights: Weights) -> bool:
    """Whether to load the repo's half-precision files: a download fetches only those; a
    local copy uses them where it has them (a full-precision-only copy loads as it is)."""
    if model.variant is None:
        return False
    if weights.source == "download":
        return True
    return any(Path(weights.location).glob(f"*/*.{model.variant}.safetensors"))


def load_controlnet(
    family: str, weights: Weights, device: str, low_vram: bool, dtype: torch.dtype
) -> Any:
    """The family's ControlNet class, ``from_pretrained`` like the base model."""
    controlnet = CONTROLNET_CLASSES[family].from_pretrained(weights.location, dtype=dtype)
    return controlnet if low_vram else controlnet.to(device)


def load_image_encoder(weights: Weights, device: str, low_vram: bool, dtype: torch.dtype) -> Any:
    """The IP-Adapters' CLIP image encoder (``models/image_encoder`` of h94/IP-Adapter)."""
    # Any: transformers wraps PreTrainedModel.to (functools.wraps), which mypy can't bind
    encoder: Any = CLIPVisionModelWithProjection.from_pretrained(
        weights.location, subfolder=IP_ADAPTER_IMAGE_ENCODER, dtype=dtype
    )
    return encoder if low_vram else encoder.to(device)


def controlnets(
    ctx: ImageContext[ImageRequest], runtime: ModelRuntime, low_vram: bool
) -> list[Any]:
    """The request's ControlNets, each loaded once per device and kept like a model."""
    family = ctx.model.family
    loaded = []
    for controlnet in ctx.request.controlnets:
        name, repo = CONTROLNETS[family, controlnet.model]
        weights = runtime.weights(name, repo)

        def load(weights: Weights = weights) -> Any:
            return load_controlnet(family, weights, runtime.device, low_vram, runtime.dtype)

        loaded.append(runtime.resident(CacheKey(name, offloaded=low_vram), load, weights))
    return loaded


def ip_adapter_weights(ctx: ImageContext[ImageRequest], runtime: ModelRuntime) -> Weights:
    """h94/IP-Adapter's folder, checked for every adapter file the request names."""
    name, repo = IP_ADAPTER_WEIGHTS
    weights = runtime.weights(name, repo, files=(f"{IP_ADAPTER_IMAGE_ENCODER}/config.json",))
    if weights.source != "download":
        for adapter in ctx.request.ip_adapters:
            file = Path(weights.location, *IP_ADAPTERS[ctx.model.family, adapter.model])
            if not file.is_file():
                raise JobFailure(
                    f"IP-Adapter weights {file} are missing: put the {repo} files there "
                    f"(e.g. `hf download {repo} --local-dir {weights.location}`)",
                    type="model_unavailable",
                )
    return weights


def image_encoder(
    ctx: ImageContext[ImageRequest], runtime: ModelRuntime, weights: Weights, low_vram: bool
) -> Any:
    """The image encoder every IP-Adapter shares, loaded once per device and dtype."""
    device, dtype = runtime.device, runtime.dtype
    key = CacheKey(IP_ADAPTER_WEIGHTS[0], "image_encoder", low_vram, str(dtype))
    return runtime.resident(
        key, lambda: load_image_encoder(weights, device, low_vram, dtype), weights
    )


def canny_edges(image: Image.Image) -> Image.Image:
    import cv2  # only preprocess: true needs OpenCV

    edges = cv2.Canny(np.asarray(image.convert("L")), *CANNY_THRESHOLDS)
    return Image.fromarray(edges).convert("RGB")


def control_images(ctx: ImageContext[ImageRequest], runtime: ModelRuntime) -> list[Image.Image]:
    """The control images, made from plain pictures where a ControlNet asks to preprocess."""
    images = []
    for controlnet, image in zip(ctx.request.controlnets, ctx.control_images, strict=True):
        if controlnet.preprocess and controlnet.model == ControlNetKind.canny:
            image = canny_edges(image)
        elif controlnet.preprocess and controlnet.model == ControlNetKind.depth:
            image = estimate_depth(image, runtime)
        images.append(image)
    return images


def adapter_scale(unet: Any, adapter: IpAdapter) -> float | dict[str, Any]:
    """An IP-Adapter's scale for ``set_ip_adapter_scale``: a float for every layer, or a
    per-block dict (InstantStyle). "style" is the middle attention of the first cross-attention
    up block, "layout" the second attention of the last cross-attention down block: on SDXL
    up_blocks.0.attentions.1 and down_blocks.2.attentions.1 (InstantStyle's layers), on SD 1.5
    the same places, up_blocks.1.attentions.1 and down_blocks.2.attentions.1."""
    if adapter.scale_layers == ScaleLayers.all:
        return adapter.scale
    down = [i for i, block in enumerate(unet.down_blocks) if hasattr(block, "attentions")]
    up = [i for i, block in enumerate(unet.up_blocks) if hasattr(block, "attentions")]
    down_layers = unet.config.layers_per_block
    up_layers = down_layers + 1

    def only(index: int, count: int) -> list[float]:
        return [adapter.scale if i == min(index, count - 1) else 0.0 for i in range(count)]

    scale: dict[str, Any] = {}
    if adapter.scale_layers in (ScaleLayers.style, ScaleLayers.style_and_layout):
        scale["up"] = {f"block_{up[0]}": only(1, up_layers)}
    if adapter.scale_layers in (ScaleLayers.layout, ScaleLayers.style_and_layout):
        scale["down"] = {f"block_{down[-1]}": only(1, down_layers)}
    return scale


@contextlib.contextmanager
def ip_adapters_loaded(
    pipe: DiffusionPipeline, ctx: ImageContext[ImageRequest], weights: Weights, device: str
) -> Iterator[dict[str, Any]]:
    """Load the request's IP-Adapters into ``pipe`` for one call and yield the call's
    arguments for them; then take them out again, whatever happened: the UNet is shared with
    the kept pipelines, which must run as loaded afterwards. Building and removing their
    layers holds the process-wide build lock (another device may be loading a model)."""
    unet = pipe.unet
    processors = unet.attn_processors
    files = [IP_ADAPTERS[ctx.model.family, adapter.model] for adapter in ctx.request.ip_adapters]
    try:
        with building_models(device):
            pipe.load_ip_adapter(
                weights.location,
                subfolder=[subfolder for subfolder, _ in files],
                weight_name=[weight_name for _, weight_name in files],
                image_encoder_folder=IP_ADAPTER_IMAGE_ENCODER,
            )
        pipe.set_ip_adapter_scale([adapter_scale(unet, a) for a in ctx.request.ip_adapters])
        arguments: dict[str, Any] = {"ip_adapter_image": ctx.adapter_images}
        if any(mask is not None for mask in ctx.adapter_masks):
            everywhere = Image.new("L", (ctx.width, ctx.height), 255)
            masks = IPAdapterMaskProcessor().preprocess(
                [mask or everywhere for mask in ctx.adapter_masks],
                height=ctx.height,
                width=ctx.width,
            )
            # one [1, images=1, height, width] mask per adapter
            arguments["cross_attention_kwargs"] = {
                "ip_adapter_masks": [mask.unsqueeze(0) for mask in masks]
            }
        yield arguments
    finally:
        with building_models(device):
            pipe.unload_ip_adapter()
            unet.set_attn_processor(processors)


def _call_arguments(
    ctx: ImageContext[ImageRequest],
    pipe: DiffusionPipeline,
    progress: Progress,
    controls: list[Image.Image],
) -> dict:
    request = ctx.request
    steps = request.num_inference_steps
    # validate_request filled them in (the model's steps, a random seed)
    assert steps is not None and ctx.seed is not None

    def on_step_end(pipeline: DiffusionPipeline, step: int, timestep: Any, tensors: dict) -> dict:
        progress(step + 1, getattr(pipeline, "_num_timesteps", None) or steps)
        return tensors

    arguments: dict[str, Any] = {
        "prompt": request.prompt,
        "num_inference_steps": steps,
        "guidance_scale": request.guidance_scale,
        "width": ctx.width,
        "height": ctx.height,
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
    if controls:
        # SD 1.5 and SDXL text→image ControlNet pipelines take the control image as ``image``.
        scales = [controlnet.conditioning_scale for controlnet in request.controlnets]
        several = len(controls) > 1
        arguments["control_image" if "control_image" in accepted else "image"] = (
            controls if several else controls[0]
        )
        arguments["controlnet_conditioning_scale"] = scales if several else scales[0]
        if several and "control_mode" in accepted:
            # Flux: several ControlNets need a control mode each, even non-union ones (None);
            # its image→image and inpainting pipelines run none of them without it.
            arguments["control_mode"] = [None] * len(controls)
    return {name: value for name, value in arguments.items() if name in accepted}


def run(
    ctx: ImageContext[ImageRequest], runtime: ModelRuntime
) -> tuple[list[Picture], dict[str, float]]:
    """Run the request's mode on its model; returns the image and the load/run timings."""
    started = time.perf_counter()
    device = runtime.device
    controls = control_images(ctx, runtime)
    weights = runtime.weights(ctx.model.name, ctx.model.repo)
    low_vram = ctx.request.optimize_low_vram and runtime.on_gpu
    speed = runtime.services.settings.speed
    prompt_cache = image_settings(runtime.services.settings).prompt_cache
    loaded = runtime.resident(
        CacheKey(ctx.model.name, offloaded=low_vram),
        lambda: load_model(
            ctx.model, weights, device, low_vram, speed, runtime.dtype, prompt_cache
        ),
        weights,
    )
    components: dict[str, Any] = {}
    if controls:
        nets = controlnets(ctx, runtime, low_vram)
        components["controlnet"] = nets if len(nets) > 1 else nets[0]
    adapters = ip_adapter_weights(ctx, runtime) if ctx.request.ip_adapters else None
    if adapters is not None:
        components["image_encoder"] = image_encoder(ctx, runtime, adapters, low_vram)
    loaded.use_loras(request_loras(runtime.services, ctx.model, ctx.request.loras))
    pipe = loaded.pipeline(ctx.mode, **components)
    if components and low_vram:
        pipe.enable_model_cpu_offload(device=device)
    runtime.precision = precision_of(pipe)
    loaded_at = time.perf_counter()
    count = ctx.request.num_images
    assert ctx.seed is not None  # validate_request filled it in (random when not given)
    index = 0  # of the image being made

    def progress(step: int, total: int) -> None:  # over the whole batch
        runtime.progress(index * total + step, count * total)

    arguments = _call_arguments(ctx, pipe, progress, controls)
    if "padding_mask_crop" not in arguments:  # (its paste-back works on 8-bit pictures)
        if device.startswith("cuda"):
            arguments["output_type"] = "pt"  # to 8 bits on the GPU (tensor_to_pil), not numpy
        elif ctx.float_output:
            arguments["output_type"] = "np"
    # What the model compiled whole compiled for (DD_COMPILE=full): no LoRA ever loaded into
    # it, no ControlNet, no IP-Adapter. Other calls don't stop to compile (CompileBudget).
    plain = not (loaded.adapters or components)
    pictures = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(loaded.compiling.calling(plain))
        if adapters is not None:
            arguments |= stack.enter_context(ip_adapters_loaded(pipe, ctx, adapters, device))
        # One call per image, each with its own generator: image i of a batch is exactly the
        # image its seed gives alone (a batched call's kernels may round differently).
        for index in range(count):
            seed = ctx.seed + index
            generator = torch.Generator("cpu").manual_seed(seed)
            image = pipe(**arguments, generator=generator).images[0]
            pictures.append(picture(image, ctx.float_output, seed))
    finished = time.perf_counter()
    return pictures, {"load_s": loaded_at - started, "inference_s": finished - loaded_at}


def picture(image: Any, keep_float: bool, seed: int) -> Picture:
    """A pipeline's image (PIL, a [0, 1] HxWxC array or a CHW tensor) as a Picture; with
    ``keep_float``, its float pixels too (for EXR and 16-bit outputs)."""
    if isinstance(image, Image.Image):
        return Picture(image, seed=seed)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image).permute(2, 0, 1)
    array = image.float().permute(1, 2, 0).cpu().numpy() if keep_float else None
    return Picture(tensor_to_pil(image), array=array, seed=seed)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A [0, 1] CHW image → PIL, with the arithmetic of diffusers' numpy_to_pil (float32,
    x 255, round half to even), done where the tensor is: the same pixels, less copying."""
    pixels = (image.float() * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
