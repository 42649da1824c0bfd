"""Output sizes: the bounds a request gives, the input's aspect ratio, what the model's
weights can make, and the small default of tiny weights."""

from __future__ import annotations

import json
from pathlib import Path

from api.common.errors import InvalidField
from api.common.models import Weights
from api.images.registry import (
    SIZE_MULTIPLE,
    TINY_MIN_SIZE,
    TINY_SIZE,
    VAE_SCALE,
    ImageModel,
)
from api.images.schemas import (
    ImageRequest,
)


def default_size(model: ImageModel, weights: Weights | None) -> tuple[int, int]:
    """The output size of a generative request without max_width/max_height: the model's
    native size, or TINY_SIZE when its weights are tiny (random weights make noise at any
    size, and a laptop makes 64 px of it in seconds, 1024 px in minutes)."""
    if model.task is None and weights is not None and weights.tiny:
        return TINY_SIZE, TINY_SIZE
    return model.width, model.height


def smallest_side(model: ImageModel, weights: Weights | None) -> int:
    """The smallest max_width / max_height a generative model takes: its family's (MIN_SIZES),
    or TINY_MIN_SIZE when its weights are tiny."""
    if weights is not None and weights.tiny:
        return min(model.min_size, TINY_MIN_SIZE)
    return model.min_size


def largest_side(weights: Weights | None) -> int | None:
    """The widest output a denoiser's weights can make, where their config says: SD3's
    transformer learned position embeddings for ``pos_embed_max_size`` patches a side
    (192 for SD3 medium: 3072 px; 384 for SD3.5). None when unbounded or unknown."""
    if weights is None or weights.source == "download":
        return None
    config = Path(weights.location, "transformer", "config.json")
    if not config.is_file():
        return None
    values = json.loads(config.read_text())
    patches = values.get("pos_embed_max_size")
    if not patches:
        return None
    return int(patches) * int(values.get("patch_size", 2)) * VAE_SCALE


def check_sides(model: ImageModel, weights: Weights | None, request: ImageRequest) -> None:
    """max_width / max_height within what the model's weights can make, or a 422 on it."""
    smallest = smallest_side(model, weights)
    largest = largest_side(weights)
    for name in ("max_width", "max_height"):
        value = getattr(request, name)
        if value is not None and value < smallest:
            tiny = " with tiny weights" if weights is not None and weights.tiny else ""
            raise InvalidField(
                f"{name} {value} is less than {model.name} makes{tiny}: at least {smallest} px a "
                "side (GET /api/models: min_size); ask for more",
                name,
            )
        if largest is not None and value is not None and value > largest:
            raise InvalidField(
                f"{name} {value} is more than {model.name} can make: at most {largest} px a "
                "side (its transformer's position embeddings); ask for less",
                name,
            )


def round_size(value: float) -> int:
    return max(SIZE_MULTIPLE, int(value) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def output_size(
    max_width: int, max_height: int, image_size: tuple[int, int] | None
) -> tuple[int, int]:
    """Text→image: the bounds. With an input image (its size): its aspect ratio, scaled to
    fit them."""
    if image_size is None:
        return round_size(max_width), round_size(max_height)
    width, height = image_size
    scale = min(max_width / width, max_height / height)
    return round_size(width * scale), round_size(height * scale)


def check_output_size(
    model: ImageModel,
    weights: Weights | None,
    max_width: int,
    max_height: int,
    image_size: tuple[int, int] | None,
) -> None:
    """The output an input's aspect ratio makes within the bounds: each side at least the
    model's smallest, or a 422 on input_image_path (a very wide or tall plate)."""
    if image_size is None:
        return
    width, height = output_size(max_width, max_height, image_size)
    smallest = smallest_side(model, weights)
    if min(width, height) < smallest:
        raise InvalidField(
            f"input_image_path is {image_size[0]}x{image_size[1]}: fitted into max_width x "
            f"max_height ({max_width}x{max_height}), aspect kept, the output would be "
            f"{width}x{height}, under {model.name}'s min_size of {smallest} px a side; raise "
            "max_width/max_height or crop the input",
            "input_image_path",
        )
