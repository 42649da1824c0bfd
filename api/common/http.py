"""The HTTP plumbing every route shares: error answers in one shape, request bodies
bounded as they arrive, and the API docs served offline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.common import router as routes
from api.common.errors import ApiError, ErrorResponse
from api.common.names import unknown_field_hint

log = logging.getLogger("api")

# Request bodies: an upload may hold its limit plus room for the multipart framing; every
# other route takes JSON, bounded well below that (a data: URL holds at most 64 MiB).
MAX_JSON_BYTES = 128 * 2**20
UPLOAD_ROUTE = ("POST", "/api/files")

# Swagger UI's and ReDoc's scripts, served from the fastapi-offline package: no CDN.
DOCS_ASSETS = "/docs/static"


def error_response(status: int, type_: str, message: str, field: str | None) -> JSONResponse:
    return JSONResponse(ErrorResponse.of(type_, message, field), status_code=status)


def _field_of(location: tuple) -> str | None:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(400, "bad_request", f"malformed JSON: {first['msg']}", "body")
        body_field = getattr(request.scope.get("route"), "body_field", None)
        body = body_field.field_info.annotation if body_field is not None else None
        messages = []
        for err in errors:
            field = _field_of(tuple(err["loc"])) or "body"
            message = f"{field}: {err['msg']}"
            if err.get("type") == "extra_forbidden" and body is not None:
                message += unknown_field_hint(body, tuple(err["loc"]))
            messages.append(message)
        return error_response(
            422, "invalid_field", "; ".join(messages), _field_of(tuple(first["loc"])) or "body"
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, kind, str(exc.detail), None)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}", None)


def body_limit(method: str, path: str) -> tuple[int, str, str]:
    """The most bytes a request's body may have, the field a refusal names, and why."""
    if (method, path) == UPLOAD_ROUTE:
        limit = routes.MAX_UPLOAD_BYTES
        return limit + 2**20, "file", f"an upload is at most {limit // 2**20} MiB"
    return (
        MAX_JSON_BYTES,
        "body",
        f"a request body is at most {MAX_JSON_BYTES // 2**20} MiB (send large inputs "
        "through POST /api/files)",
    )


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Counts each request body as it arrives and answers 413 as soon as it passes the
    route's limit (``limit_for``), Content-Length or not (a chunked body has none): the
    rest is never read, and the connection is closed. A declared Content-Length over the
    limit is refused before any of the body is read."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], tuple[int, str, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, field, why = self.limit_for(scope["method"], scope["path"])
        refusal = error_response(413, "payload_too_large", f"too large: {why}", field)
        refusal.headers["Connection"] = "close"  # the rest of the body is not read
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await refusal(scope, receive, send)
            return
        received = 0
        over = answered = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if over and not answered:  # its answer to a cut body ("can't parse it"): ours instead
                return
            answered = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not answered:
            await refusal(scope, receive, send)


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, working offline; the spec's error answers
    are ours (FastAPI's default 422 schema is not what the handlers send)."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_default_validation_errors(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def without_default_validation_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Drop the 422 FastAPI adds to every route with parameters (its own error schema):
    routes that can answer 422 declare it with ``error_responses``, in our shape."""
    for path in spec["paths"].values():
        for operation in path.values():
            response = operation.get("responses", {}).get("422", {})
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    schemas = spec.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return spec
