"""The images domain's settings (DD_WARMUP, DD_LORAS_DIR): mixed into the server's
Settings, read and validated at start-up with the rest."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from api.common.settings import SETTINGS_CONFIG, ServerSettings, SettingsError
from api.images.registry import DIFFUSION_FAMILIES, IMAGE_MODELS, LORAS_FOLDER


class ImageSettings(BaseSettings):
    """The warm-up of the image models (what DD_COMPILE compiles, done before the first job),
    their prompt cache and where the LoRAs are."""

    model_config = SETTINGS_CONFIG

    warmup: list[str] = Field(
        [],
        description="JSON list of diffusion models to load (and compile) on every device at "
        "start-up, before the first job",
        examples=[["sdxl"]],
    )
    prompt_cache: int = Field(
        16,
        ge=0,
        le=1024,
        description="text-encoder outputs of this many recent prompts kept per diffusion model "
        "(the same prompt again skips its text encoders: same pixels); 0 turns it off",
    )
    loras_dir: Path | None = Field(
        None,
        description="the LoRAs a request may name (loras: [{name, scale}]): *.safetensors "
        "files, each named by its file name without .safetensors "
        f"(unset: <models dir>/{LORAS_FOLDER})",
    )


def image_settings(settings: object) -> ImageSettings:
    """The images part of the server's settings (its Settings class mixes ImageSettings in)."""
    if not isinstance(settings, ImageSettings):
        raise TypeError("the server's settings don't include the images domain's")
    return settings


def loras_dir(settings: object) -> Path:
    """Where the LoRAs are: DD_LORAS_DIR, else the ``loras`` folder of the models dir."""
    folder = image_settings(settings).loras_dir
    if folder is None:
        assert isinstance(settings, ServerSettings)  # the server's Settings mixes both in
        return settings.resolved_models_dir / LORAS_FOLDER
    return folder.expanduser().resolve()


def check_settings(settings: object) -> None:
    """DD_WARMUP may name the diffusion models only (they are what compiles)."""
    names = image_settings(settings).warmup
    warmable = [m.name for m in IMAGE_MODELS.values() if m.family in DIFFUSION_FAMILIES]
    wrong = [name for name in names if name not in warmable]
    if wrong:
        raise SettingsError(
            f"invalid settings:\n  DD_WARMUP: {', '.join(wrong)} can't be warmed up; "
            f"name diffusion models: {', '.join(warmable)}"
        )
