"""Requests and results of the images domain."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.images.registry import MAX_SIDE, MAX_STEPS, Mode


class ImageRequest(BaseModel):
    """Text→image, image→image or inpainting, chosen from which inputs are given."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model name, as listed by GET /api/models (e.g. sdxl).")
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Random when absent; the seed used is in the job's request and result.",
    )
    num_inference_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Model default when absent."
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=100, description="Model default when absent."
    )
    strength: float = Field(
        0.5,
        ge=0,
        le=1,
        description="How much image→image and "
        "inpainting change the input (0 keeps it, 1 replaces it).",
    )
    max_width: int | None = Field(
        None,
        ge=16,
        le=MAX_SIDE,
        description="Bound on the output width; the model's native width when absent.",
    )
    max_height: int | None = Field(
        None,
        ge=16,
        le=MAX_SIDE,
        description="Bound on the output height; the model's native height when absent.",
    )
    input_image_path: str | None = Field(
        None,
        description="Image to start from (image→image, "
        "inpainting): a path on shared storage, a path from "
        "POST /api/files, or a data: URL.",
    )
    input_mask_path: str | None = Field(
        None, description="White = repaint. With input_image_path: inpainting."
    )
    output_image_path: str | None = Field(
        None,
        description="Where to write the PNG/JPEG/WebP; "
        "a timestamped take is kept in <dir>/tmp/. Absent: "
        "the data dir, served at /api/files.",
    )
    inpainting_full_image: bool = Field(
        True,
        description="Inpaint at the full image (true) or "
        "on a padded crop around the mask, pasted back (false).",
    )
    optimize_low_vram: bool = Field(
        False,
        description="On CUDA: offload idle model parts to the CPU (slower, much less GPU memory).",
    )


class ImageOutput(BaseModel):
    path: str
    url: str
    width: int
    height: int
    take_path: str | None = None
    label: str | None = None  # segmentation: what this mask is of
    score: float | None = None  # segmentation: detection confidence


class ImageResult(BaseModel):
    images: list[ImageOutput]
    seed: int
    mode: Mode
    tiny_weights: bool
    timings: dict[str, float]
