"""The videos domain's settings: Runway's key and address (its SDK's usual variables),
mixed into the server's Settings and read at start-up with the rest."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings

from api.common.settings import SETTINGS_CONFIG


class VideoSettings(BaseSettings):
    model_config = SETTINGS_CONFIG

    runwayml_api_secret: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("RUNWAYML_API_SECRET", "runwayml_api_secret"),
        description="Runway key (runway-gen4-turbo); without it Runway models are refused",
    )
    runwayml_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("RUNWAYML_BASE_URL", "runwayml_base_url"),
        description="another endpoint speaking Runway's API (unset: Runway's own)",
    )
    runway_poll_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="how often a Runway task is asked how it is going (Runway updates a "
        "task at most every 5 s)",
    )


def video_settings(settings: object) -> VideoSettings:
    """The videos part of the server's settings (its Settings class mixes VideoSettings in)."""
    if not isinstance(settings, VideoSettings):
        raise TypeError("the server's settings don't include the videos domain's")
    return settings
