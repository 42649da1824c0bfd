"""Turns an image request into what a model needs: checked paths, loaded images, sizes."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from api.common.errors import InvalidField
from api.common.files import atomic_write
from api.common.media import (
    IMAGE_OUTPUT_SUFFIXES,
    check_image_bytes,
    decode_data_url,
    decode_image_bytes,
    open_image,
)
from api.common.models import ModelCache, Weights
from api.common.services import Services
from api.images.registry import GENERATIVE, IMAGE_MODELS, SIZE_MULTIPLE, TASKS, ImageModel, Mode
from api.images.schemas import ImageRequest


def find_model(name: str) -> ImageModel:
    model = IMAGE_MODELS.get(name)
    if model is None:
        raise InvalidField(
            f"unknown image model {name!r}; choose one of {', '.join(IMAGE_MODELS)}", "model"
        )
    return model


def mode_of(model: ImageModel, request: ImageRequest) -> Mode:
    """A task model's task; else inpainting, image→image or text→image from the inputs."""
    if model.task is not None:
        return model.task
    if request.input_image_path and request.input_mask_path:
        return Mode.inpainting
    if request.input_image_path:
        return Mode.image_to_image
    return Mode.text_to_image


class InputImages:
    """Checks input image references at submit. A data URL becomes an uploaded file, but
    only once every check has passed (``save``): a rejected request writes nothing."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._pending: dict[str, bytes] = {}

    def check(self, value: str | None, field: str) -> str | None:
        """The reference as it will be stored in the job (a path), or a 4xx naming ``field``."""
        if value is None:
            return None
        if value.startswith("data:"):
            data, suffix = decode_data_url(value, field)
            check_image_bytes(data, field)
            path = self.services.data_dir / "uploads" / f"{uuid.uuid4().hex}{suffix}"
            self._pending[str(path)] = data
            return str(path)
        path = self.services.paths.resolve_input_path(value, field)
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:
            raise InvalidField(f"{field} {value!r} is not a readable image: {exc}", field) from None
        return value

    def open(self, checked: str, field: str) -> Image.Image:
        """A checked reference, decoded."""
        if checked in self._pending:
            return decode_image_bytes(self._pending[checked])
        return open_image(self.services.paths.resolve_input_path(checked, field), field)

    def save(self) -> None:
        for path, data in self._pending.items():
            atomic_write(Path(path), data)
        self._pending.clear()


def validate_request(request: ImageRequest, services: Services) -> ImageRequest:
    """Submit-time checks (4xx naming the field); returns the request with defaults filled."""
    model = find_model(request.model)
    if request.input_mask_path and not request.input_image_path:
        raise InvalidField(
            "input_mask_path needs input_image_path (the image to inpaint)", "input_mask_path"
        )
    mode = mode_of(model, request)
    if mode not in model.modes:
        can = ", ".join(sorted(model.modes))
        raise InvalidField(f"model {model.name} can't do {mode} (it does {can})", "model")
    if mode in TASKS and not request.input_image_path:
        raise InvalidField(
            f"model {model.name} ({mode}) needs input_image_path", "input_image_path"
        )
    steps = request.num_inference_steps or model.steps
    if mode in (Mode.image_to_image, Mode.inpainting) and int(steps * request.strength) < 1:
        raise InvalidField(
            f"strength {request.strength} with {steps} steps leaves no denoising step to run; "
            "raise strength or num_inference_steps",
            "strength",
        )
    if request.output_image_path is not None:
        services.paths.resolve_output_path(
            request.output_image_path, "output_image_path", IMAGE_OUTPUT_SUFFIXES
        )
    inputs = InputImages(services)
    image_path = inputs.check(request.input_image_path, "input_image_path")
    mask_path = inputs.check(request.input_mask_path, "input_mask_path")
    if (
        mask_path is not None
        and inputs.open(mask_path, "input_mask_path").convert("L").getbbox() is None
    ):
        raise InvalidField(
            "input_mask_path is all black: nothing to inpaint (white = repaint)", "input_mask_path"
        )
    inputs.save()
    return request.model_copy(
        update={
            "input_image_path": image_path,
            "input_mask_path": mask_path,
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
class Picture:
    """One output of a model run: the main one (``name`` empty) or an extra one, written
    beside it as ``<stem>_<name><suffix>`` (e.g. one mask per detected object)."""

    image: Image.Image | None = None
    array: np.ndarray | None = None  # float32 data (depth) for formats that keep it
    name: str = ""
    label: str | None = None
    score: float | None = None


@dataclass
class Runtime:
    """What a model module gets besides the request: device, resident models, progress,
    and the weights finder (which remembers whether any tiny weights were used)."""

    device: str
    cache: ModelCache
    progress: Callable[[int, int], None]
    find: Callable[[str, str], Weights]
    used: list[Weights] = field(default_factory=list)

    def weights(self, name: str, repo: str) -> Weights:
        found = self.find(name, repo)
        self.used.append(found)
        return found

    @property
    def tiny(self) -> bool:
        return any(weights.tiny for weights in self.used)


@dataclass
class ImageContext:
    """A request resolved for a run: the model, sizes, loaded inputs and the output path."""

    model: ImageModel
    mode: Mode
    request: ImageRequest
    width: int
    height: int
    seed: int
    image: Image.Image | None  # generative modes: resized to width x height; tasks: as given
    mask: Image.Image | None
    output_path: Path | None

    def metadata(self, tiny: bool) -> dict[str, Any]:
        """Every generation parameter, written into the output file."""
        r = self.request
        generative = self.mode in GENERATIVE
        return {
            "model": self.model.name,
            "repo": self.model.repo,
            "mode": self.mode,
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt if self.model.negative_prompt else None,
            "seed": self.seed,
            "num_inference_steps": r.num_inference_steps,
            "guidance_scale": r.guidance_scale,
            "strength": r.strength if generative and self.mode != Mode.text_to_image else None,
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
    mode = mode_of(model, request)
    paths = services.paths
    image = mask = None
    if request.input_image_path:
        path = paths.resolve_input_path(request.input_image_path, "input_image_path")
        image = open_image(path, "input_image_path").convert("RGB")
    if mode in TASKS:
        width, height = image.size
    else:
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
