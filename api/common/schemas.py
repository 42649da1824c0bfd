"""What every request body of every domain inherits: unknown fields refused, every string
valid Unicode, and the bounds on prompts, names and paths."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_PROMPT_CHARS = 10_000
MAX_NAME_CHARS = 200  # model names and other identifiers
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX
# An input sent inline as a data: URL: 64 MiB of base64 (48 MiB of image). Bigger inputs go
# through POST /api/files. The JSON body as a whole is bounded too (api.common.http.MAX_JSON_BYTES).
MAX_DATA_URL_CHARS = 64 * 2**20

# A lone UTF-16 surrogate: JSON can spell one ("\ud800"), but it is no character, and UTF-8
# can't hold it (the job store, the response and the output's metadata would all fail on it).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(text: str) -> str:
    """``text`` with surrogates spelled out (``\\ud800``), safe to show and to encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Where a string that is not valid Unicode is: its location (keys and indexes), the
# string, and the index of its first lone surrogate.
InvalidText = tuple[tuple[str | int, ...], str, int]


def find_invalid_text(value: Any, location: tuple[str | int, ...] = ()) -> InvalidText | None:
    """The location (keys and indexes) of the first string in ``value`` that is not valid
    Unicode, with the string and the offending index; None when every string is valid."""
    if isinstance(value, str):
        surrogate = None if value.isascii() else _SURROGATE.search(value)  # isascii: O(1)
        return (location, value, surrogate.start()) if surrogate else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_invalid_text(key, (*location, _escaped(str(key)))) or find_invalid_text(
                item, (*location, key)
            )
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_invalid_text(item, (*location, index))
            if found:
                return found
    return None


def replace_invalid_text(value: Any) -> Any:
    """``value`` (strings, lists, dicts, nested) with every lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {replace_invalid_text(k): replace_invalid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_invalid_text(item) for item in value]
    return value


def _check_input_path(value: str) -> str:
    if len(value) > MAX_PATH_CHARS and not value.startswith("data:"):
        raise PydanticCustomError(
            "path_too_long",
            "a path is at most {limit} characters (this one has {length}); only a data: URL "
            "may be longer (up to {data_url_mib} MiB)",
            {
                "limit": MAX_PATH_CHARS,
                "length": len(value),
                "data_url_mib": MAX_DATA_URL_CHARS >> 20,
            },
        )
    return value


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
OutputPath = Annotated[str, Field(max_length=MAX_PATH_CHARS)]
# A path on shared storage or from POST /api/files, or an inline data: URL.
# A result's record of what its diffusion model computed in (DD_PRECISION, ModelRuntime).
Precision = Annotated[
    str | None,
    Field(
        description="What the diffusion model computed in: fp32 (CPU), bf16, fp16, or fp8 "
        "(DD_PRECISION=fp8: its denoiser's linear layers in FP8, the rest bf16; a re-run on a "
        "server with another precision makes other pixels); null for other models."
    ),
]
InputPath = Annotated[str, Field(max_length=MAX_DATA_URL_CHARS), AfterValidator(_check_input_path)]


class RequestModel(BaseModel):
    """Base of every request body (and of the objects inside one): a field the model
    doesn't have is refused, and so is any string, key or value, nested ones included, that
    is not valid Unicode (a lone surrogate) -- a 422 naming where it is."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        found = find_invalid_text(data)
        if found is None:
            return data
        location, text, index = found
        error = PydanticCustomError(
            "invalid_unicode",
            "not valid Unicode: a lone UTF-16 surrogate ({character}) at character {index}",
            {"character": _escaped(text[index]), "index": index},
        )
        raise ValidationError.from_exception_data(
            cls.__name__,
            [InitErrorDetails(type=error, loc=location, input=_escaped(text[:200]))],
        )


def _check_callback_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError(
            "callback_url", "must be an http:// or https:// URL with a host name", {}
        )
    return value


CallbackUrl = Annotated[
    str | None,
    Field(
        None,
        max_length=MAX_PATH_CHARS,
        description="Webhook: once the job ends, it is POSTed here as JSON (as GET "
        "/api/jobs/{id} answers it), signed in the X-DD-Signature header "
        "(sha256=<HMAC-SHA256 of the body, hex>, with the server's webhook-secret); retried "
        "with backoff until answered 2xx. Its host must be one of DD_CALLBACK_HOSTS.",
        examples=["https://pipeline.studio.local/hooks/deferred-diffusion"],
        exclude_if=lambda value: value is None,
    ),
    AfterValidator(_check_callback_url),
]


# A job's place in its queue: higher runs first, equal ones in submission order.
MIN_PRIORITY = -10
MAX_PRIORITY = 10

Priority = Annotated[
    int,
    Field(
        0,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description=f"Place in the queue: from {MIN_PRIORITY} to {MAX_PRIORITY}, higher runs "
        "first, equal priorities in submission order; a running job is never stopped for "
        "another. An API key may allow less (DD_API_KEYS' max_priority: 403 above it).",
    ),
]


class JobRequest(RequestModel):
    """Base of every domain's request body (the top level): what any job may ask for
    besides its work -- its place in the queue (``priority``) and a webhook
    (``callback_url``)."""

    priority: Priority = 0
    callback_url: CallbackUrl = None


def request_fields(request_type: type[BaseModel]) -> list[str]:
    """A request's field names as a user reads them: its own first, then those any job
    may carry (``priority``, ``callback_url``), which pydantic would list first."""
    shared = list(JobRequest.model_fields)
    return [f for f in request_type.model_fields if f not in shared] + [
        f for f in shared if f in request_type.model_fields
    ]
