"""The image models: user-facing names → family, weights, what they can do, their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    text_to_image = "text_to_image"
    image_to_image = "image_to_image"
    inpainting = "inpainting"
    upscale = "upscale"
    depth = "depth"
    segmentation = "segmentation"


GENERATIVE = frozenset({Mode.text_to_image, Mode.image_to_image, Mode.inpainting})
# Modes that always need an input image and are the model's only mode.
TASKS = frozenset({Mode.upscale, Mode.depth, Mode.segmentation})

# Diffusion families: one implementation each (models/diffusion.py); variants are data.
DIFFUSION_FAMILIES = ("sd1.5", "sdxl", "sd3", "flux")

# Output sizes are rounded down to this: 8x VAE downsampling, then 2x2 patches (SD3, FLUX).
SIZE_MULTIPLE = 16
MAX_SIDE = 4096
MAX_STEPS = 500


@dataclass(frozen=True)
class ImageModel:
    name: str
    family: str  # sd1.5 | sdxl | sd3 | flux | upscaler | depth | segmentation | openai
    repo: str  # Hugging Face repo id of the weights (or the provider's model id)
    modes: frozenset[Mode]
    width: int
    height: int
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: bool = True  # whether the family takes a negative prompt
    external: bool = False  # runs at a provider: no local weights

    @property
    def task(self) -> Mode | None:
        """The single task of an upscaling/depth/segmentation model."""
        tasks = self.modes & TASKS
        return next(iter(tasks)) if tasks else None


def _diffusion(
    name: str,
    family: str,
    repo: str,
    size: int,
    steps: int,
    guidance: float,
    modes: frozenset[Mode] = GENERATIVE,
    negative_prompt: bool = True,
) -> ImageModel:
    return ImageModel(name, family, repo, modes, size, size, steps, guidance, negative_prompt)


IMAGE_MODELS: dict[str, ImageModel] = {
    model.name: model
    for model in (
        _diffusion("sd1.5", "sd1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, 30, 7.5),
        _diffusion("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 1024, 30, 5.0),
        _diffusion(
            "sdxl-refiner",
            "sdxl",
            "stabilityai/stable-diffusion-xl-refiner-1.0",
            1024,
            30,
            5.0,
            modes=frozenset({Mode.image_to_image, Mode.inpainting}),
        ),
        _diffusion("RealVisXL", "sdxl", "SG161222/RealVisXL_V4.0", 1024, 30, 5.0),
        _diffusion("Fluently-XL", "sdxl", "fluently/Fluently-XL-v4", 1024, 30, 5.0),
        _diffusion("sd3", "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", 1024, 28, 7.0),
        _diffusion("sd3.5", "sd3", "stabilityai/stable-diffusion-3.5-medium", 1024, 40, 4.5),
        _diffusion(
            "flux-schnell",
            "flux",
            "black-forest-labs/FLUX.1-schnell",
            1024,
            4,
            0.0,
            negative_prompt=False,
        ),
    )
}
