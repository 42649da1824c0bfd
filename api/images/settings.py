"""The images domain's settings (DD_COMPILE, DD_CHANNELS_LAST, DD_WARMUP): mixed into the
server's Settings, read and validated at start-up with the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from api.common.settings import SETTINGS_CONFIG, SettingsError
from api.images.registry import DIFFUSION_FAMILIES, IMAGE_MODELS


@dataclass(frozen=True)
class Speed:
    """How the diffusion models run on CUDA (DD_COMPILE, DD_CHANNELS_LAST, DD_PRECISION).

    compile: ``auto`` = ``regional`` where Triton is installed, else ``off``; ``regional``
    compiles only the repeated transformer blocks (a first request of seconds, not minutes);
    ``full`` compiles the whole denoiser and the VAE decoder (fastest once warm).
    """

    compile: str = "off"
    channels_last: bool = False
    precision: str = "auto"


class ImageSettings(BaseSettings):
    """Speed and warm-up of the diffusion models (CUDA only; the CPU runs plain PyTorch)."""

    model_config = SETTINGS_CONFIG

    compile: Literal["auto", "off", "regional", "full"] = Field(
        "auto",
        description="CUDA only: torch.compile of the diffusion models: auto (regional where "
        "Triton is installed), regional, full or off",
    )
    channels_last: bool = Field(
        True, description="CUDA only: channels-last memory layout for UNets and VAEs"
    )
    warmup: list[str] = Field(
        [],
        description="JSON list of diffusion models to load (and compile) on every device at "
        "start-up, before the first job",
        examples=[["sdxl"]],
    )

    @property
    def speed(self) -> Speed:
        precision = getattr(self, "precision", "auto")  # the server's DD_PRECISION
        return Speed(self.compile, self.channels_last, precision)


def image_settings(settings: object) -> ImageSettings:
    """The images part of the server's settings (its Settings class mixes ImageSettings in)."""
    if not isinstance(settings, ImageSettings):
        raise TypeError("the server's settings don't include the images domain's")
    return settings


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
