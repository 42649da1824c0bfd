"""A validated image request resolved for a run: the model, its mode, sizes, loaded
inputs and the output path (``build_context``), and what a model run gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image

from api.common.errors import InvalidField
from api.common.media import (
    IMAGE_OUTPUT_SUFFIXES,
    open_image,
)
from api.common.names import did_you_mean
from api.common.services import Services
from api.images.registry import (
    CONTROLNETS,
    IMAGE_MODELS,
    IP_ADAPTERS,
    UPSCALE_FACTOR,
    UPSCALE_NOISE_LEVEL,
    ImageModel,
    Mode,
)
from api.images.schemas import (
    AnyImageRequest,
    DepthRequest,
    ImageRequest,
    ImageRequestBase,
    UpscaleRequest,
)
from api.images.sizing import output_size

# The request of a context: each model family takes its models' (ImageRequest for the
# diffusion families and gpt-image-1, UpscaleRequest for the upscaler...).
RequestT = TypeVar("RequestT", bound=ImageRequestBase)

# The depth model (models/depth.py), which also makes depth ControlNets' control images
# (preprocess: true).
DEPTH_MODEL = "depth-anything"


def find_model(name: str) -> ImageModel:
    model = IMAGE_MODELS.get(name)
    if model is None:
        raise InvalidField(
            f"unknown image model {name!r}{did_you_mean(name, IMAGE_MODELS, quote=True)}; "
            f"choose one of {', '.join(IMAGE_MODELS)}",
            "model",
        )
    return model


def mode_of(model: ImageModel, request: AnyImageRequest) -> Mode:
    """A task model's task; else inpainting, image→image or text→image from the inputs."""
    if model.task is not None:
        return model.task
    if isinstance(request, ImageRequest) and request.input_image_path and request.input_mask_path:
        return Mode.inpainting
    if request.input_image_path:
        return Mode.image_to_image
    return Mode.text_to_image


# What a generative model's output may be: 8-bit pictures, 8- or 16-bit PNG and TIFF
# (bit_depth), half-float linear EXR.
GENERATED_OUTPUT_SUFFIXES = (*IMAGE_OUTPUT_SUFFIXES, ".tif", ".tiff", ".exr")
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def output_suffixes(mode: Mode, request: AnyImageRequest) -> tuple[str, ...]:
    """What output_image_path may end with; the first is the default output's suffix."""
    if isinstance(request, ImageRequest):
        return GENERATED_OUTPUT_SUFFIXES
    if mode == Mode.depth:
        assert isinstance(request, DepthRequest)  # a depth model's request
        if request.depth_format == "exr":
            return (".exr",)
        if request.depth_format == "png16":
            return (".png",)
    return IMAGE_OUTPUT_SUFFIXES


@dataclass
class Picture:
    """One output of a model run: the main one (``name`` empty) or an extra one, written
    beside it as ``<stem>_<name><suffix>`` (e.g. one mask per detected object)."""

    image: Image.Image
    # Float data for formats that keep it: depth (HxW, as predicted), or a generated image
    # (HxWx3, sRGB in 0..1) when the output is an EXR or 16 bits a channel.
    array: np.ndarray | None = None
    name: str = ""
    label: str | None = None
    score: float | None = None
    seed: int | None = None  # a generated image's own seed (a batch's: seed + its index)


@dataclass
class ImageContext(Generic[RequestT]):
    """A request resolved for a run: the model, sizes, loaded inputs and the output path."""

    model: ImageModel
    mode: Mode
    request: RequestT
    width: int  # of the output (an upscale's is 4x its input's)
    height: int
    seed: int | None  # None for models that take no seed (depth, segmentation)
    image: Image.Image | None  # generative modes: resized to width x height; tasks: as given
    mask: Image.Image | None
    output_path: Path | None
    # One per request.controlnets, resized to width x height (not yet preprocessed).
    control_images: list[Image.Image] = field(default_factory=list)
    # One per request.ip_adapters: the reference as given, and its mask at width x height.
    adapter_images: list[Image.Image] = field(default_factory=list)
    adapter_masks: list[Image.Image | None] = field(default_factory=list)

    @property
    def float_output(self) -> bool:
        """Whether the model's float pixels are kept: an EXR or a 16-bit output."""
        if not isinstance(self.request, ImageRequest):
            return False
        exr = self.output_path is not None and self.output_path.suffix.lower() == ".exr"
        return exr or self.request.bit_depth == 16

    def metadata(self, tiny: bool, precision: str | None) -> dict[str, Any]:
        """Every parameter of the run, written into the output file (None: doesn't apply)."""
        fields = self.request.model_dump(mode="json")  # only the fields of the model's request
        mode, family = self.mode, self.model.family
        return {
            "model": self.model.name,
            "repo": self.model.repo,
            "provider": family if self.model.external else None,
            "mode": mode,
            "prompt": fields.get("prompt"),
            "negative_prompt": fields.get("negative_prompt")
            if self.model.negative_prompt
            else None,
            "seed": self.seed,
            "num_inference_steps": fields.get("num_inference_steps"),
            "guidance_scale": fields.get("guidance_scale"),
            "strength": fields.get("strength")
            if mode in (Mode.image_to_image, Mode.inpainting)
            else None,
            "width": self.width,
            "height": self.height,
            "input_image_path": fields["input_image_path"],
            "input_mask_path": fields.get("input_mask_path"),
            "inpainting_full_image": fields.get("inpainting_full_image")
            if mode == Mode.inpainting
            else None,
            "noise_level": UPSCALE_NOISE_LEVEL if mode == Mode.upscale else None,
            "depth_format": fields.get("depth_format"),
            "bit_depth": fields.get("bit_depth"),
            "box_threshold": fields.get("box_threshold"),
            "text_threshold": fields.get("text_threshold"),
            "controlnets": [
                controlnet | {"repo": CONTROLNETS[family, controlnet["model"]][1]}
                for controlnet in fields.get("controlnets", [])
            ]
            or None,
            "ip_adapters": [
                adapter
                | (
                    {}
                    if self.model.external  # plain references, no adapter weights
                    else {"weights": "/".join(IP_ADAPTERS[family, adapter["model"]])}
                )
                for adapter in fields.get("ip_adapters", [])
            ]
            or None,
            "loras": fields.get("loras") or None,
            "tiny_weights": tiny,
            "precision": precision,
        }


def build_context(request: AnyImageRequest, services: Services) -> ImageContext[AnyImageRequest]:
    """Resolve a validated request again at run time (files may have changed since submit)."""
    model = find_model(request.model)
    mode = mode_of(model, request)
    paths = services.paths

    def load(value: str, field: str) -> Image.Image:
        return open_image(paths.resolve_input_path(value, field), field)

    image = None
    if request.input_image_path:
        image = load(request.input_image_path, "input_image_path").convert("RGB")
    output = None
    if request.output_image_path:
        output = paths.resolve_output_path(
            request.output_image_path, "output_image_path", output_suffixes(mode, request)
        )
    if not isinstance(request, ImageRequest):  # a task: upscaling, depth, segmentation
        assert image is not None  # a task request requires its input image
        factor = UPSCALE_FACTOR if mode == Mode.upscale else 1
        seed = request.seed if isinstance(request, UpscaleRequest) else None
        width, height = image.width * factor, image.height * factor
        return ImageContext(model, mode, request, width, height, seed, image, None, output)

    # validate_request filled them in (the model's native size when the client sent none)
    assert request.max_width is not None and request.max_height is not None
    width, height = output_size(
        request.max_width, request.max_height, image.size if image is not None else None
    )
    size = (width, height)
    if image is not None:
        image = image.resize(size, Image.Resampling.LANCZOS)
    mask = None
    if request.input_mask_path:
        mask = load(request.input_mask_path, "input_mask_path").convert("L")
        mask = mask.resize(size, Image.Resampling.NEAREST)
    control_images = [
        load(c.image_path, f"controlnets.{i}.image_path")
        .convert("RGB")
        .resize(size, Image.Resampling.LANCZOS)
        for i, c in enumerate(request.controlnets)
    ]
    adapter_images = [
        load(a.image_path, f"ip_adapters.{i}.image_path").convert("RGB")
        for i, a in enumerate(request.ip_adapters)
    ]
    adapter_masks = [
        load(a.mask_path, f"ip_adapters.{i}.mask_path")
        .convert("L")
        .resize(size, Image.Resampling.NEAREST)
        if a.mask_path
        else None
        for i, a in enumerate(request.ip_adapters)
    ]
    return ImageContext(
        model,
        mode,
        request,
        width,
        height,
        request.seed,
        image,
        mask,
        output,
        control_images,
        adapter_images,
        adapter_masks,
    )
