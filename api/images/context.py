"""Turns an image request into what a model needs: checked paths, loaded images, sizes."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from api.common.errors import InvalidField
from api.common.files import atomic_write
from api.common.media import IMAGE_OUTPUT_SUFFIXES, check_image_bytes, decode_data_url, open_image
from api.common.services import Services
from api.images.registry import IMAGE_MODELS, SIZE_MULTIPLE, ImageModel, Mode
from api.images.schemas import ImageRequest


def find_model(name: str) -> ImageModel:
    model = IMAGE_MODELS.get(name)
    if model is None:
        raise InvalidField(
            f"unknown image model {name!r}; choose one of {', '.join(IMAGE_MODELS)}", "model"
        )
    return model


def mode_of(request: ImageRequest) -> Mode:
    if request.input_image_path and request.input_mask_path:
        return Mode.inpainting
    if request.input_image_path:
        return Mode.image_to_image
    return Mode.text_to_image


def _store_data_url(value: str, field: str, services: Services) -> str:
    data, suffix = decode_data_url(value, field)
    check_image_bytes(data, field)
    path = services.data_dir / "uploads" / f"{uuid.uuid4().hex}{suffix}"
    atomic_write(path, data)
    return str(path)


def _check_input_image(value: str | None, field: str, services: Services) -> str | None:
    """Validate an input image reference; a data URL is stored and becomes a path."""
    if value is None:
        return None
    if value.startswith("data:"):
        return _store_data_url(value, field, services)
    path = services.paths.resolve_input_path(value, field)
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:
        raise InvalidField(f"{field} {value!r} is not a readable image: {exc}", field) from None
    return value


def validate_request(request: ImageRequest, services: Services) -> ImageRequest:
    """Submit-time checks (4xx naming the field); returns the request with defaults filled."""
    model = find_model(request.model)
    if request.input_mask_path and not request.input_image_path:
        raise InvalidField(
            "input_mask_path needs input_image_path (the image to inpaint)", "input_mask_path"
        )
    mode = mode_of(request)
    if mode not in model.modes:
        can = ", ".join(sorted(model.modes))
        raise InvalidField(f"model {model.name} can't do {mode} (it does {can})", "model")
    steps = request.num_inference_steps or model.steps
    if mode != Mode.text_to_image and int(steps * request.strength) < 1:
        raise InvalidField(
            f"strength {request.strength} with {steps} steps leaves no denoising step to run; "
            "raise strength or num_inference_steps",
            "strength",
        )
    if request.output_image_path is not None:
        services.paths.resolve_output_path(
            request.output_image_path, "output_image_path", IMAGE_OUTPUT_SUFFIXES
        )
    return request.model_copy(
        update={
            "input_image_path": _check_input_image(
                request.input_image_path, "input_image_path", services
            ),
            "input_mask_path": _check_input_image(
                request.input_mask_path, "input_mask_path", services
            ),
            "seed": request.seed if request.seed is not None else random.randrange(2**31),
            "num_inference_steps": steps,
            "guidance_scale": (
                request.guidance_scale
                if request.guidance_scale is not None
                else model.guidance_scale
            ),
            "max_width": request.max_width or model.width,
            "max_height": request.max_height or model.height,
        }
    )


def round_size(value: float) -> int:
    return max(SIZE_MULTIPLE, int(value) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def output_size(max_width: int, max_height: int, image: Image.Image | None) -> tuple[int, int]:
    """Text→image: the bounds. With an input image: its aspect ratio, scaled to fit them."""
    if image is None:
        return round_size(max_width), round_size(max_height)
    scale = min(max_width / image.width, max_height / image.height)
    return round_size(image.width * scale), round_size(image.height * scale)


@dataclass
class ImageContext:
    """A request resolved for a run: the model, sizes, loaded inputs and the output path."""

    model: ImageModel
    mode: Mode
    request: ImageRequest
    width: int
    height: int
    seed: int
    image: Image.Image | None
    mask: Image.Image | None
    output_path: Path | None

    def metadata(self, tiny: bool) -> dict[str, Any]:
        """Every generation parameter, written into the output file."""
        r = self.request
        return {
            "model": self.model.name,
            "repo": self.model.repo,
            "mode": self.mode,
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt if self.model.negative_prompt else None,
            "seed": self.seed,
            "num_inference_steps": r.num_inference_steps,
            "guidance_scale": r.guidance_scale,
            "strength": r.strength if self.mode != Mode.text_to_image else None,
            "width": self.width,
            "height": self.height,
            "input_image_path": r.input_image_path,
            "input_mask_path": r.input_mask_path,
            "inpainting_full_image": r.inpainting_full_image
            if self.mode == Mode.inpainting
            else None,
            "tiny_weights": tiny,
        }


def build_context(request: ImageRequest, services: Services) -> ImageContext:
    """Resolve a validated request again at run time (files may have changed since submit)."""
    model = find_model(request.model)
    mode = mode_of(request)
    paths = services.paths
    image = mask = None
    if request.input_image_path:
        path = paths.resolve_input_path(request.input_image_path, "input_image_path")
        image = open_image(path, "input_image_path").convert("RGB")
    width, height = output_size(request.max_width, request.max_height, image)
    if image is not None:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    if request.input_mask_path:
        path = paths.resolve_input_path(request.input_mask_path, "input_mask_path")
        mask = open_image(path, "input_mask_path").convert("L")
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    output = None
    if request.output_image_path:
        output = paths.resolve_output_path(
            request.output_image_path, "output_image_path", IMAGE_OUTPUT_SUFFIXES
        )
    return ImageContext(model, mode, request, width, height, request.seed, image, mask, output)
