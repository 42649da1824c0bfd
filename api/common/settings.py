"""Server settings: one object, read from DD_* environment variables, validated at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / (
        "deferred-diffusion"
    )


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


class Settings(BaseSettings):
    """Everything the server reads from its environment (prefix ``DD_``)."""

    model_config = SettingsConfigDict(env_prefix="DD_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    models_dir: Path | None = None
    allowed_roots: list[Path] | None = None
    path_map: dict[str, str] = {}
    api_keys: list[str] = []
    url_expiry_seconds: int = Field(7 * 24 * 3600, ge=1)  # signed download links in results
    allow_no_auth: bool = False
    device: str = "auto"
    # Each device's jobs in a worker process of its own: "auto" = with several GPUs.
    device_processes: Literal["auto", "always"] = "auto"
    allow_downloads: bool = True
    max_loaded_models: int = Field(6, ge=1)
    # Input images larger than this (from their header) are refused before decoding.
    max_input_pixels: int = Field(8192 * 8192, ge=1)
    warmup: list[str] = []  # models to load (and compile) at start-up, before the first job
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Speed (CUDA only; the CPU path always runs plain eager PyTorch).
    compile: Literal["auto", "off", "regional", "full"] = "auto"
    channels_last: bool = True
    precision: Literal["auto", "bf16", "fp16"] = "auto"
    compile_cache_dir: Path | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        if any(not key.strip() for key in value):
            raise ValueError("API keys must not be empty strings")
        return value

    @field_validator("path_map")
    @classmethod
    def _path_map(cls, value: dict[str, str]) -> dict[str, str]:
        for client, server in value.items():
            if not client.strip() or not server.strip():
                raise ValueError("path map entries must map a non-empty prefix to a path")
            if not Path(server).is_absolute():
                raise ValueError(f"server side of {client!r} must be an absolute path: {server!r}")
        return value

    @model_validator(mode="after")
    def _network(self) -> Settings:
        if not self.api_keys and not self.allow_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"DD_HOST={self.host} exposes the server beyond this machine without API keys; "
                "set DD_API_KEYS='[\"a-long-secret\"]' or, on a trusted network, "
                "DD_ALLOW_NO_AUTH=true"
            )
        return self

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").expanduser().resolve()

    @property
    def speed(self) -> Speed:
        return Speed(self.compile, self.channels_last, self.precision)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def roots(self) -> list[Path]:
        """Allowed roots for input and output paths, resolved (links and ``..``)."""
        roots = self.allowed_roots
        if roots is None:
            roots = [self.data_dir, Path.home()]
        return [Path(root).expanduser().resolve() for root in roots]


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(Exception):
    """Settings that can't be used; the message says which and why."""


def load_settings() -> Settings:
    """Read and validate settings, turning pydantic's report into one readable message."""
    try:
        settings = Settings()
    except PydanticSettingsError as exc:  # a list/map variable that is not valid JSON
        match = re.search(r'field "(\w+)"', str(exc))
        name = f"DD_{match.group(1).upper()}" if match else "a DD_ variable"
        raise SettingsError(
            f"invalid settings:\n  {name}: not valid JSON ({exc.__cause__ or exc})"
        ) from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            name = f"DD_{where.upper()}" if where else "settings"
            lines.append(f"  {name}: {err['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    try:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"invalid settings:\n  DD_DATA_DIR: cannot create it: {exc}") from None
    return settings
