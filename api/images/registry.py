"""The image models: user-facing names → family, weights, what they can do, their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    text_to_image = "text_to_image"
    image_to_image = "image_to_image"
    inpainting = "inpainting"


ALL_MODES = frozenset(Mode)

# Output sizes are rounded down to this: 8x VAE downsampling, then 2x2 patches (SD3, FLUX).
SIZE_MULTIPLE = 16
MAX_SIDE = 4096
MAX_STEPS = 500


@dataclass(frozen=True)
class ImageModel:
    name: str
    family: str  # sd1.5 | sdxl | sd3 | flux: one implementation each, variants are data
    repo: str
    modes: frozenset[Mode]
    width: int
    height: int
    steps: int
    guidance_scale: float
    negative_prompt: bool = True  # whether the family takes a negative prompt


IMAGE_MODELS: dict[str, ImageModel] = {
    model.name: model
    for model in (
        ImageModel(
            "sd1.5",
            "sd1.5",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            ALL_MODES,
            512,
            512,
            30,
            7.5,
        ),
        ImageModel(
            "sdxl",
            "sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0",
            ALL_MODES,
            1024,
            1024,
            30,
            5.0,
        ),
        ImageModel(
            "sdxl-refiner",
            "sdxl",
            "stabilityai/stable-diffusion-xl-refiner-1.0",
            frozenset({Mode.image_to_image, Mode.inpainting}),
            1024,
            1024,
            30,
            5.0,
        ),
        ImageModel("RealVisXL", "sdxl", "SG161222/RealVisXL_V4.0", ALL_MODES, 1024, 1024, 30, 5.0),
        ImageModel(
            "Fluently-XL", "sdxl", "fluently/Fluently-XL-v4", ALL_MODES, 1024, 1024, 30, 5.0
        ),
        ImageModel(
            "sd3",
            "sd3",
            "stabilityai/stable-diffusion-3-medium-diffusers",
            ALL_MODES,
            1024,
            1024,
            28,
            7.0,
        ),
        ImageModel(
            "sd3.5",
            "sd3",
            "stabilityai/stable-diffusion-3.5-medium",
            ALL_MODES,
            1024,
            1024,
            40,
            4.5,
        ),
        ImageModel(
            "flux-schnell",
            "flux",
            "black-forest-labs/FLUX.1-schnell",
            ALL_MODES,
            1024,
            1024,
            4,
            0.0,
            negative_prompt=False,
        ),
    )
}
