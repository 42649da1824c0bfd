"""Server settings: one object, read from DD_* environment variables, validated at start-up."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from api.common.names import close_names
from api.common.pipelines import Speed
from api.common.schemas import MAX_PRIORITY

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
# Every settings class (the server's and each domain's) reads DD_* the same way.
SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix="DD_", extra="ignore", frozen=True, populate_by_name=True
)


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / (
        "deferred-diffusion"
    )


class ApiKey(BaseModel):
    """One of DD_API_KEYS: the key, and the highest priority its jobs may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, description="the secret, sent as 'Bearer <key>'")
    max_priority: int | None = Field(
        None,
        ge=0,
        le=MAX_PRIORITY,
        description="the highest priority a request with this key may ask for (unset: "
        f"{MAX_PRIORITY}); at least 0, so a request leaving priority out always passes",
    )

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("API keys must not be empty strings")
        return value


class ServerSettings(BaseSettings):
    """What the whole server reads from its environment (prefix ``DD_``, and the providers'
    own variables). Each domain adds its own settings (``Domain.settings``): the server's
    ``Settings`` class (api.domains) is this one with every domain's mixed in, read and
    validated at start-up as one object."""

    model_config = SETTINGS_CONFIG

    host: str = Field(
        "127.0.0.1",
        description="address to listen on; 0.0.0.0 serves the network (needs DD_API_KEYS or "
        "DD_ALLOW_NO_AUTH)",
    )
    port: int = Field(5000, ge=1, le=65535, description="port to listen on")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="the job database, uploads, and outputs of requests without an output path",
    )
    models_dir: Path | None = Field(
        None,
        description="local weights, one folder per model name (unset: <data dir>/models)",
    )
    allowed_roots: list[Path] | None = Field(
        None,
        description="JSON list of folders that input and output paths must lie in "
        "(unset: the data dir and the home folder)",
        examples=[["/mnt/show", "/data"]],
    )
    path_map: dict[str, str] = Field(
        {},
        description="JSON object, client path prefix to server path; applied to request "
        "paths, reversed in results",
        examples=[{"Z:/show": "/mnt/show"}],
    )
    api_keys: list[ApiKey] = Field(
        [],
        description="JSON list of API keys; when set, every /api call needs "
        "'Authorization: Bearer <key>'. A key is a string, or an object "
        '{"key": "...", "max_priority": N} whose jobs may ask for a priority of at most N '
        f"(0 to {MAX_PRIORITY})",
        examples=[["a-long-secret", {"key": "farm-secret", "max_priority": 0}]],
    )
    url_expiry_seconds: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="seconds the signed links in job results open an output without the key",
    )
    allow_no_auth: bool = Field(
        False,
        description="allow binding beyond loopback without API keys (trusted networks only)",
    )
    device: str = Field(
        "auto",
        description="auto (every CUDA GPU, one job runner each; else the CPU), cpu, cuda, cuda:N",
    )
    device_processes: Literal["auto", "always"] = Field(
        "auto",
        description="auto: with several GPUs, each GPU's jobs run in a worker process of its "
        "own; always: also with one device (a crash in a model's native code then fails only "
        "its job)",
    )
    allow_downloads: bool = Field(
        True,
        description="download missing weights from Hugging Face (HF_HUB_OFFLINE=1 also stops "
        "downloads)",
    )
    preload: bool = Field(
        True,
        description="as the server starts, in the background, each device's runner imports "
        "the model libraries (torch, diffusers, transformers) and opens its GPU, so that the "
        "first job doesn't wait for them (seconds); /health lists the devices still at it",
    )
    max_loaded_models: int = Field(
        6, ge=1, description="models kept loaded per device (least recently used unloaded first)"
    )
    max_loaded_memory: str | None = Field(
        None,
        description="weights kept loaded per device, at most: bytes (e.g. 40GB) or a share of "
        "the device's memory (e.g. 60%); least recently used unloaded first (unset: as much "
        "as the device has free)",
    )
    unloaded_models_ram: str = Field(
        "0",
        description="CUDA only: models unloaded from a GPU stay in host RAM up to this much "
        "(bytes, e.g. 32GB, or a share of the machine's RAM, never more than it has "
        "available), so that using them again needs no read from disk and no compilation; "
        "0 turns this off",
    )
    max_input_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="input images with more pixels than this (read from their header) are "
        "refused before decoding",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info",
        description="critical, error, warning, info or debug (debug also logs the model "
        "libraries' warnings)",
    )
    # How every domain's PyTorch models run (CUDA only; the CPU runs plain float32 PyTorch).
    compile: Literal["auto", "off", "regional", "full"] = Field(
        "auto",
        description="CUDA only: torch.compile of the diffusion models (images and videos): "
        "auto (regional where Triton is installed), regional, full or off",
    )
    channels_last: bool = Field(
        True, description="CUDA only: channels-last memory layout for UNets and VAEs"
    )
    precision: Literal["auto", "bf16", "fp16", "fp8"] = Field(
        "auto",
        description="CUDA only: auto (bf16 where the GPU has it, else fp16), bf16, fp16, or "
        "fp8 (opt-in, changes the pixels: bf16 with the diffusion denoisers' linear layers in "
        "FP8; needs GPUs of compute capability 8.9+, e.g. Ada, Hopper)",
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="where compiled kernels are kept across restarts "
        "(unset: <data dir>/compile-cache)",
    )
    # Scale-out (DESIGN §4): jobs through Celery on Redis, run by `python -m api worker`.
    broker_url: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:6379/N: queue jobs through Celery on this Redis "
        "(shared with the workers, which run them: `python -m api worker`); unset: jobs run "
        "in this process",
        examples=["redis://:secret@redis-host:6379/0"],
    )
    worker_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="with DD_BROKER_URL: how often a worker says it is alive; one unheard for "
        "three beats is gone, and its job runs again elsewhere (or fails as interrupted)",
    )
    job_attempts: int = Field(
        2,
        ge=1,
        le=10,
        description="with DD_BROKER_URL: how many workers may die running one job before it "
        "fails as interrupted instead of running again",
    )
    callback_hosts: list[str] = Field(
        [],
        description="JSON list of host names a request's callback_url may point at (webhooks: "
        "the finished job is POSTed there, signed); empty: webhooks are off",
        examples=[["pipeline.studio.local", "127.0.0.1"]],
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="remove finished jobs, and the outputs the server wrote under its data dir, "
        "this many days after they ended (never files on the allowed roots); unset: keep "
        "forever",
    )
    # The providers' keys, under their usual names (not DD_): read here, passed to the SDKs.
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="OpenAI key (gpt-image-1, the agent's default LLM)",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="another endpoint speaking OpenAI's API (unset: OpenAI's own)",
    )
    hf_hub_offline: bool = Field(
        False,
        validation_alias=AliasChoices("HF_HUB_OFFLINE", "hf_hub_offline"),
        description="Hugging Face's own switch: no downloads at all",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        if urlsplit(url).scheme not in ("redis", "rediss") or not urlsplit(url).hostname:
            raise ValueError(
                f"must be a Redis URL, redis://[:password@]host:port/db; got {masked_url(url)}"
            )
        return SecretStr(url)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        """A plain string is a key with no bound of its own on priority."""
        if isinstance(value, list):
            return [{"key": key} if isinstance(key, str) else key for key in value]
        return value

    @field_validator("callback_hosts")
    @classmethod
    def _callback_hosts(cls, value: list[str]) -> list[str]:
        if any(not host.strip() or "/" in host for host in value):
            raise ValueError("callback hosts are host names (no scheme, port or path)")
        return [host.strip().lower() for host in value]

    @field_validator("max_loaded_memory", "unloaded_models_ram")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            memory_bytes(value, 1)  # raises ValueError naming the accepted forms
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
    def _network(self) -> ServerSettings:
        if not self.api_keys and not self.allow_no_auth and not is_loopback(self.host):
            raise ValueError(
                f"listening on {self.host} (DD_HOST or serve --host) exposes the server beyond "
                "this machine without API keys; "
                "set DD_API_KEYS='[\"a-long-secret\"]' or, on a trusted network, "
                "DD_ALLOW_NO_AUTH=true"
            )
        return self

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.data_dir / "models").expanduser().resolve()

    @property
    def speed(self) -> Speed:
        return Speed(self.compile, self.channels_last, fp8=self.precision == "fp8")

    @property
    def downloads(self) -> bool:
        """Whether missing weights may be downloaded (DD_ALLOW_DOWNLOADS, HF_HUB_OFFLINE)."""
        return self.allow_downloads and not self.hf_hub_offline

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


def masked_url(url: str) -> str:
    """A URL as it may be shown (logs, /health): its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|[KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def memory_bytes(value: str, total: int) -> int:
    """A memory setting ("40GB", "512MiB", "60%" of ``total``, plain bytes) in bytes. GB and
    GiB both mean 2**30 bytes, as GPU and RAM sizes are quoted."""
    match = _MEMORY.match(value)
    if match is None:
        raise ValueError(f"must be bytes (e.g. 40GB, 512MB) or a share (e.g. 60%); got {value!r}")
    number, unit = float(match[1]), (match[2] or "").lower()
    if unit == "%":
        return int(total * min(number, 100.0) / 100)
    return int(number * _UNITS[unit[:1]])


class SettingsError(Exception):
    """Settings that can't be used; the message says which and why."""


S = TypeVar("S", bound=ServerSettings)


def load_settings(settings_type: type[S], **overrides: Any) -> S:
    """Read and validate settings (``settings_type``: the server's, api.domains.Settings),
    turning pydantic's report into one readable message.

    ``overrides`` (command-line flags, e.g. ``host``) take precedence over DD_* variables
    and are named as flags (``--host``) in the message.
    """

    def named(field: str) -> str:
        return f"--{field.replace('_', '-')}" if field in overrides else f"DD_{field.upper()}"

    try:
        settings = settings_type(**overrides)
    except PydanticSettingsError as exc:  # a list/map variable that is not valid JSON
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else ""
        name = named(field) if field else "a DD_ variable"
        raise SettingsError(
            f"invalid settings:\n  {name}: not valid JSON ({exc.__cause__ or exc})"
            f"{_example(settings_type, field)}"
        ) from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field, *inner = [str(part) for part in err["loc"]] or [""]
            name = named(field) + "".join(f"[{part}]" for part in inner) if field else "settings"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {name}: {message}{_example(settings_type, field)}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    try:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"invalid settings:\n  DD_DATA_DIR: cannot create it: {exc}") from None
    return settings


def _example(settings_type: type[BaseSettings], field: str) -> str:
    """``; e.g. DD_PATH_MAP='{...}'`` for a setting with a documented example (the JSON ones)."""
    info = settings_type.model_fields.get(field)
    if info is None or not info.examples:
        return ""
    return f"; e.g. DD_{field.upper()}='{json.dumps(info.examples[0])}'"


# DD_ variables that other tools read (the clients, the tests): not a typo of a setting.
OTHER_TOOLS_VARIABLES = frozenset({"DD_SERVER_ADDRESS", "DD_API_KEY", "DD_REAL_MODELS_DIR"})


def start_up_warnings(
    settings: ServerSettings, environ: Mapping[str, str] | None = None
) -> list[str]:
    """What looks wrong but need not stop the server: DD_ variables that are no setting (a
    typo?), allowed roots that don't exist (a share not mounted?)."""
    environ = os.environ if environ is None else environ
    known = [name.upper() for name in type(settings).model_fields]
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("DD_") or upper[3:] in known or upper in OTHER_TOOLS_VARIABLES:
            continue
        meant = " or ".join(f"DD_{name}" for name in close_names(upper[3:], known))
        warnings.append(
            f"{variable} is not a setting of this server and is ignored"
            f"{f' (did you mean {meant}?)' if meant else ''}; "
            "`python -m api serve --help` lists the settings"
        )
    for root in settings.roots if settings.allowed_roots is not None else []:
        if not root.is_dir():
            warnings.append(
                f"DD_ALLOWED_ROOTS: {root} is not a folder on this machine (a typo, or a share "
                "not mounted?): paths under it can't be read"
            )
    return warnings


def environment_name(name: str, info: FieldInfo) -> str:
    """The variable a setting is read from: DD_<NAME>, or a provider's own (OPENAI_API_KEY)."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"DD_{name.upper()}"


def settings_help(settings_type: type[BaseSettings]) -> str:
    """Every variable with its default and meaning, from the settings' fields."""
    lines = ["settings (environment variables; lists and objects are JSON):"]
    fields = settings_type.model_fields.items()
    server_first = sorted(fields, key=lambda item: item[0] not in ServerSettings.model_fields)
    for name, info in server_first:
        default = info.get_default(call_default_factory=True)
        if default is None:
            shown = "unset"
        elif isinstance(default, bool | list | dict):
            shown = json.dumps(default)
        else:
            shown = str(default)
        lines += textwrap.wrap(
            f"{info.description} [default: {shown}]",
            width=100,
            initial_indent=f"  {environment_name(name, info):<24}",
            subsequent_indent=" " * 26,
        )
    return "\n".join(lines)
