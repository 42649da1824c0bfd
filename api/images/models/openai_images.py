"""gpt-image-1 at OpenAI, through the official SDK: text→image (``images.generate``);
image→image and inpainting (``images.edit``), with the request's IP-Adapter images as extra
reference images (text→image with references is an edit of the references alone).

The client reads ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` from the environment, as the SDK
always does. The provider makes one of three sizes and takes no seed, negative prompt,
guidance or strength; its image comes back at the size it made.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
from typing import Any

import numpy as np
import openai
from PIL import Image, UnidentifiedImageError

from api.common.errors import JobFailure
from api.common.runtime import ModelRuntime
from api.images.context import ImageContext, Picture
from api.images.registry import Mode
from api.images.schemas import ImageRequest

# Width/height ratio → the size the provider makes; the nearest ratio (in log scale) wins.
SIZES = {1.0: "1024x1024", 1.5: "1536x1024", 2 / 3: "1024x1536"}
# num_inference_steps → quality: up to 10 low, up to 30 medium, more high; absent auto.
QUALITY_BY_STEPS = ((10, "low"), (30, "medium"))
# Reference images (ip_adapters) are shrunk to this many pixels a side before upload.
MAX_REFERENCE_SIDE = 1536


def size_for(width: int, height: int) -> str:
    """The provider size nearest to the aspect ratio of ``width`` x ``height``."""
    aspect = width / height
    return SIZES[min(SIZES, key=lambda ratio: abs(math.log(aspect / ratio)))]


def quality_for(steps: int | None) -> str:
    if steps is None:
        return "auto"
    for most, quality in QUALITY_BY_STEPS:
        if steps <= most:
            return quality
    return "high"


def png_file(image: Image.Image, name: str) -> tuple[str, bytes, str]:
    """An image as the SDK uploads it: (file name, PNG bytes, content type)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return name, buffer.getvalue(), "image/png"


def reference_size(image: Image.Image) -> Image.Image:
    """A reference image, shrunk (aspect kept) to at most the provider's largest side."""
    if max(image.size) <= MAX_REFERENCE_SIDE:
        return image
    scale = MAX_REFERENCE_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def alpha_mask(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The artist's mask (white = repaint) in the form the API wants: the image with
    alpha 0 where it is to be repainted (mask >= 128) and 255 elsewhere."""
    keep = np.where(np.asarray(mask.convert("L")) >= 128, 0, 255).astype(np.uint8)
    masked = image.convert("RGB").resize(mask.size)
    masked.putalpha(Image.fromarray(keep, mode="L"))
    return masked


def provider_message(exc: openai.OpenAIError) -> str:
    """The provider's own words for a failure (the ``error.message`` of its answer)."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if not message:
        message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, openai.APIStatusError):
        return f"{message} (HTTP {exc.status_code})"
    if isinstance(exc, openai.APIConnectionError) and exc.__cause__ is not None:
        return f"{message} {exc.__cause__}"
    return message


def decode_image(b64: str | None) -> Image.Image:
    if not b64:
        raise JobFailure("OpenAI: the answer carried no image", type="provider_error")
    try:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
            image.load()
            picture = image.copy()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise JobFailure(
            f"OpenAI: the image it sent is unreadable: {exc}", "provider_error"
        ) from exc
    return picture if picture.mode in ("RGB", "RGBA") else picture.convert("RGB")


def run(
    ctx: ImageContext[ImageRequest], runtime: ModelRuntime
) -> tuple[list[Picture], dict[str, float]]:
    """One call to the provider; returns its images (``num_images`` of them) and the
    round-trip time."""
    request = ctx.request
    arguments: dict[str, Any] = {
        "model": ctx.model.repo,
        "prompt": request.prompt,
        "size": size_for(ctx.width, ctx.height),
        "quality": quality_for(request.num_inference_steps),
        "n": request.num_images,
    }
    images = [png_file(ctx.image, "image.png")] if ctx.image is not None else []
    images += [
        png_file(reference_size(reference), f"reference_{index}.png")
        for index, reference in enumerate(ctx.adapter_images, 1)
    ]
    runtime.progress(0, 1)  # also where a cancel before the call is honoured
    started = time.perf_counter()
    try:
        settings = runtime.services.settings
        key = settings.openai_api_key
        client = openai.OpenAI(
            api_key=key.get_secret_value() if key else None, base_url=settings.openai_base_url
        )
        if not images:
            response = client.images.generate(**arguments)
        else:  # the input image first (the mask applies to it), then the references
            if ctx.mode == Mode.inpainting:
                assert ctx.image is not None and ctx.mask is not None  # inpainting has both
                arguments["mask"] = png_file(alpha_mask(ctx.image, ctx.mask), "mask.png")
            response = client.images.edit(image=images, **arguments)
    except openai.OpenAIError as exc:
        raise JobFailure(f"OpenAI: {provider_message(exc)}", type="provider_error") from exc
    finished = time.perf_counter()
    data = response.data or []
    if len(data) != request.num_images:
        raise JobFailure(
            f"OpenAI: asked for {request.num_images} images, it sent {len(data)}",
            type="provider_error",
        )
    pictures = [Picture(decode_image(item.b64_json)) for item in data]
    # The provider's size, not the requested one: report what was written.
    ctx.width, ctx.height = pictures[0].image.size
    runtime.progress(1, 1)
    return pictures, {"provider_s": finished - started}
