"""One small exception hierarchy: ``ApiError`` for answers (mapped to HTTP in one handler,
see api.common.http), ``JobFailure`` and ``JobCancelled`` for jobs.

``ErrorResponse`` is the body of every error answer; the handlers build it and the OpenAPI
spec documents it (``error_responses``), so the two can't drift apart. ``job_error`` is a
failed job's ``error``, whatever its handler raised.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    type: str = Field(
        description="What kind of error, for programs: e.g. invalid_field, not_found.",
        examples=["invalid_field"],
    )
    message: str = Field(description="What went wrong and how to fix it, for people.")
    field: str | None = Field(
        description="The request field, query parameter or header at fault; null when none.",
        examples=["input_image_path"],
    )


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail

    @classmethod
    def of(cls, type_: str, message: str, field: str | None) -> dict[str, Any]:
        return cls(error=ErrorDetail(type=type_, message=message, field=field)).model_dump()


# What each error status means, as the OpenAPI spec says it.
STATUS_MEANINGS = {
    400: "`bad_request`: malformed JSON or multipart body.",
    401: "`unauthorized`: missing or wrong API key (when `DD_API_KEYS` is set), or an "
    "expired or altered signed link.",
    403: "`forbidden`: a path outside the allowed roots (`DD_ALLOWED_ROOTS`), or a "
    "`priority` above the API key's `max_priority`.",
    404: "`not_found`: no such job, file or route.",
    409: "`conflict`: the job already finished.",
    413: "`payload_too_large`: the request body or upload is too large.",
    422: "`invalid_field`: a field that can't be used; `field` names it.",
    500: "`internal_error`: a bug; the message says what raised.",
    503: "`unavailable`: the server can't take this now.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` (OpenAPI) of a route that can answer these error statuses."""
    return {
        status: {"model": ErrorResponse, "description": STATUS_MEANINGS[status]}
        for status in statuses
    }


class DeferredDiffusionError(Exception):
    """Every error this server raises on purpose."""


class ApiError(DeferredDiffusionError):
    """An error the client gets back as ``{"error": {"type", "message", "field"}}``."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return ErrorResponse.of(self.type, self.message, self.field)


class BadRequest(ApiError):
    status = 400
    type = "bad_request"


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "not_found"


class Conflict(ApiError):
    status = 409
    type = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    type = "payload_too_large"


class InvalidField(ApiError):
    """A field whose value can't be used (unknown model, missing file, absurd size...)."""

    status = 422
    type = "invalid_field"


class Unavailable(ApiError):
    status = 503
    type = "unavailable"


class JobFailure(DeferredDiffusionError):
    """A job that can't finish; ``type`` and the message go into the job's ``error``."""

    def __init__(self, message: str, type: str = "job_failed") -> None:
        super().__init__(message)
        self.type = type


class JobCancelled(DeferredDiffusionError):
    """Raised inside a running job when its cancellation was requested."""


def job_error(exc: BaseException) -> dict[str, str]:
    """A failed job's ``error`` (``{type, message}``) for what its handler raised."""
    if isinstance(exc, JobFailure):
        return {"type": exc.type, "message": str(exc)}
    if isinstance(exc, ApiError):  # an input that was fine at submit but is not any more
        return {"type": "invalid_input", "message": exc.message}
    name = type(exc).__name__
    if name == "OutOfMemoryError":  # torch's, on any device
        return {
            "type": "out_of_memory",
            "message": f"the device ran out of memory: {exc}. Try a smaller size or "
            "optimize_low_vram=true.",
        }
    return {"type": "internal_error", "message": f"{name}: {exc}"}
