"""One small exception hierarchy, mapped to HTTP in one handler (see ``install_error_handlers``)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the client gets back as ``{"error": {"type", "message", "field"}}``."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "field": self.field}}


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


class JobFailure(Exception):
    """A job that can't finish; ``type`` and the message go into the job's ``error``."""

    def __init__(self, message: str, type: str = "job_failed") -> None:
        super().__init__(message)
        self.type = type


class JobCancelled(Exception):
    """Raised inside a running job when its cancellation was requested."""
