"""create_app(): the FastAPI application, its routers and the services behind them."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import __version__
from api.common import router as common
from api.common.datadir import lock_data_dir, unlock_data_dir
from api.common.devices import compute_devices
from api.common.errors import ApiError
from api.common.jobs import router as jobs
from api.common.jobs.engine import JobEngine
from api.common.jobs.process import DeviceProcesses
from api.common.jobs.runner import JobHandler
from api.common.jobs.store import JobStore
from api.common.names import unknown_field_hint
from api.common.services import Services
from api.common.settings import Settings, load_settings
from api.images import router as images
from api.images import service as image_service

log = logging.getLogger("api")

# Refused before the body is read: an upload's limit plus room for the multipart framing.
MAX_REQUEST_BYTES = common.MAX_UPLOAD_BYTES + 2**20


def error_response(status: int, type_: str, message: str, field: str | None) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": type_, "message": message, "field": field}}, status_code=status
    )


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
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), None)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}", None)


def job_functions(services: Services) -> tuple[dict[str, JobHandler], Callable[[str], None] | None]:
    """The job handler of each kind, and the warm-up a runner does for its device first."""
    handlers: dict[str, JobHandler] = {
        "images": functools.partial(image_service.run_image_job, services)
    }
    warmup = services.settings.warmup
    warm_up = functools.partial(image_service.warm_up, services, warmup) if warmup else None
    return handlers, warm_up


def uses_device_processes(settings: Settings, devices: list[str]) -> bool:
    """Whether each device's jobs run in a worker process of its own: with several GPUs
    (threads on several GPUs can't share one process's torch.compile), or when asked."""
    gpus = sum(device.startswith("cuda") for device in devices)
    return settings.device_processes == "always" or gpus > 1


def create_app(settings: Settings | None = None, devices: list[str] | None = None) -> FastAPI:
    """The server. ``devices`` overrides DD_DEVICE (tests use ["cpu"])."""
    settings = settings or load_settings()
    services = Services.from_settings(settings)
    image_service.check_warm_up(settings.warmup)
    store = JobStore(services.data_dir / "jobs.sqlite3")
    devices = devices or compute_devices(settings.device)
    handlers, warm_up = job_functions(services)
    processes = (
        DeviceProcesses(settings, job_functions, services)
        if uses_device_processes(settings, devices)
        else None
    )
    engine = JobEngine(store, handlers, devices, warm_up, processes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        lock_data_dir(services.data_dir)  # one server per data dir (its job queue)
        interrupted = engine.start(asyncio.get_running_loop())
        if interrupted:
            log.warning(
                "%d job(s) were running when the server last stopped: marked failed", interrupted
            )
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)
            store.close()
            unlock_data_dir(services.data_dir)

    app = FastAPI(
        title="deferred-diffusion",
        version=__version__,
        description="Generative AI jobs for VFX pipelines: images (more domains to come). "
        "Every model call is a job: submit, then wait, poll or follow its events.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.engine = engine
    app.state.catalogs = [image_service.describe_models]
    install_error_handlers(app)

    @app.middleware("http")
    async def refuse_oversized_bodies(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return error_response(
                413,
                "payload_too_large",
                f"request body over {MAX_REQUEST_BYTES // 2**20} MiB",
                None,
            )
        return await call_next(request)

    guarded = [Depends(common.require_api_key)]
    app.include_router(common.health_router)
    app.include_router(common.router, prefix="/api", dependencies=guarded)
    app.include_router(jobs.router, prefix="/api", dependencies=guarded)
    app.include_router(images.router, prefix="/api", dependencies=guarded)
    return app
