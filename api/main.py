"""create_app(): the FastAPI application, built from the registered domains (api.domains)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from api import __version__
from api.common import router as common
from api.common.datadir import lock_data_dir, unlock_data_dir
from api.common.devices import check_precision, compute_devices, preload
from api.common.domain import Domain
from api.common.errors import error_responses
from api.common.http import BodyLimit, body_limit, install_docs, install_error_handlers
from api.common.jobs.engine import BaseJobEngine, JobEngine
from api.common.jobs.process import DeviceProcesses
from api.common.jobs.router import jobs_router
from api.common.jobs.runner import JobContext, JobHandler
from api.common.jobs.schemas import Job
from api.common.jobs.store import JobStore
from api.common.media import limit_input_pixels
from api.common.rerun import rerun_router
from api.common.retention import UsageMeter, run_retention
from api.common.services import Services
from api.common.settings import ServerSettings, load_settings
from api.common.signing import LinkSigner, load_secret
from api.common.webhooks import OUTBOX_FILE, SECRET_FILE, Outbox, WebhookSender
from api.web.router import install_page

log = logging.getLogger("api")


def _run(domain: Domain, services: Services, job: Job, context: JobContext) -> dict[str, Any]:
    return domain.run_job(services, job, context).model_dump(mode="json")


def job_functions(
    services: Services, domains: Sequence[Domain] | None = None
) -> tuple[dict[str, JobHandler], Callable[[str], None] | None]:
    """The job handler of each kind, and what a runner does for its device before its first
    job (DD_PRELOAD's imports, then each domain's warm-up; None when there is nothing to
    do). A device's worker process (common.jobs.process) and a Celery worker call this too,
    with the registered domains."""
    if domains is None:
        from api.domains import DOMAINS

        domains = DOMAINS
    handlers: dict[str, JobHandler] = {
        domain.kind: functools.partial(_run, domain, services) for domain in domains
    }
    warm_ups = [warm for domain in domains if domain.warm_up and (warm := domain.warm_up(services))]
    modules = [name for domain in domains for name in domain.model_modules]
    if services.settings.preload and modules:
        warm_ups.insert(0, functools.partial(preload, modules))
    if not warm_ups:
        return handlers, None

    def warm_up(device: str) -> None:
        for warm in warm_ups:
            warm(device)

    return handlers, warm_up


def uses_device_processes(settings: ServerSettings, devices: list[str]) -> bool:
    """Whether each device's jobs run in a worker process of its own: with several GPUs
    (threads on several GPUs can't share one process's torch.compile), or when asked."""
    gpus = sum(device.startswith("cuda") for device in devices)
    return settings.device_processes == "always" or gpus > 1


def job_engine(
    settings: ServerSettings,
    services: Services,
    domains: Sequence[Domain],
    devices: list[str] | None,
) -> BaseJobEngine:
    """With DD_BROKER_URL, the distributed engine (Celery workers run the jobs; this process
    runs no model); else the embedded one: jobs in SQLite, a runner per device here."""
    if settings.broker_url is not None:
        from api.common.jobs.distributed.engine import CeleryJobEngine  # celery: only then

        distributed = CeleryJobEngine.from_settings(settings)
        # /api/models says where each model is loaded: on which live worker.
        distributed.on_workers = lambda workers: services.note_workers(
            {worker["name"]: worker["loaded_models"] for worker in workers}
        )
        return distributed
    store = JobStore(services.data_dir / "jobs.sqlite3")
    devices = devices or compute_devices(settings.device)
    check_precision(settings.precision, devices)
    handlers, warm_up = job_functions(services, domains)
    processes = (
        DeviceProcesses(settings, job_functions, services)
        if uses_device_processes(settings, devices)
        else None
    )
    return JobEngine(store, handlers, devices, warm_up, processes)


def background_tasks(
    settings: ServerSettings,
    services: Services,
    engine: BaseJobEngine,
    domains: dict[str, Domain],
    links: LinkSigner,
) -> tuple[list[asyncio.Task[None]], Outbox | None]:
    """What the API process runs beside the engine: the webhook sender (DD_CALLBACK_HOSTS)
    and the retention sweep (DD_RETENTION_DAYS); with the webhooks' outbox."""
    tasks: list[asyncio.Task[None]] = []
    outbox = None
    if settings.callback_hosts:
        outbox = Outbox(services.data_dir / OUTBOX_FILE)

        def answer(job: Job) -> dict[str, Any]:
            """The job as GET /api/jobs/{id} answers it: its kind's type, links signed."""
            found = job.model_dump()
            if job.result is not None:
                found["result"] = links.sign_links(job.result)
            typed = domains[job.kind].job if job.kind in domains else Job
            return typed.model_validate(found).model_dump(mode="json")

        sender = WebhookSender(engine, outbox, load_secret(services.data_dir, SECRET_FILE), answer)
        tasks.append(asyncio.create_task(sender.run(), name="webhooks"))
    if settings.retention_days is not None:
        forget = outbox.forget if outbox is not None else None
        sweep = run_retention(engine, services, domains, settings.retention_days, forget)
        tasks.append(asyncio.create_task(sweep, name="retention"))
    return tasks, outbox


def create_app(
    settings: ServerSettings | None = None,
    devices: list[str] | None = None,
    domains: Sequence[Domain] | None = None,
) -> FastAPI:
    """The server. ``devices`` overrides DD_DEVICE (tests use ["cpu"]); ``domains``, the
    registered ones (api.domains)."""
    from api.domains import DOMAINS, Settings

    domains = tuple(DOMAINS if domains is None else domains)
    settings = settings or load_settings(Settings)
    for domain in domains:
        if domain.check_settings is not None:
            domain.check_settings(settings)
    limit_input_pixels(settings.max_input_pixels)
    services = Services.from_settings(settings)
    links = LinkSigner(load_secret(services.data_dir), settings.url_expiry_seconds)
    engine = job_engine(settings, services, domains, devices)
    services.jobs = engine

    engine.callback_hosts = tuple(settings.callback_hosts)
    by_kind = {domain.kind: domain for domain in domains}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        lock_data_dir(services.data_dir)  # one server per data dir (its job queue)
        interrupted = engine.start(asyncio.get_running_loop())
        if interrupted:
            log.warning(
                "%d job(s) were running when the server last stopped: marked failed", interrupted
            )
        tasks, outbox = background_tasks(settings, services, engine, by_kind, links)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if outbox is not None:
                outbox.close()
            await asyncio.to_thread(engine.stop)
            engine.store.close()
            unlock_data_dir(services.data_dir)

    kinds = ", ".join(domain.kind for domain in domains)
    app = FastAPI(
        title="deferred-diffusion",
        version=__version__,
        description=f"Generative AI jobs for VFX pipelines: {kinds}. Every model call is a "
        "job: submit, then wait, poll or follow its events.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=error_responses(500),
    )
    app.state.services = services
    app.state.links = links
    app.state.engine = engine
    app.state.domains = by_kind
    app.state.data_dir_usage = UsageMeter(services.data_dir)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_for=body_limit)

    guarded: dict[str, Any] = {
        "dependencies": [Depends(common.require_api_key)],
        "responses": error_responses(401),
    }
    app.include_router(common.health_router)
    app.include_router(common.router, prefix="/api", **guarded)
    app.include_router(
        common.models_router([d.model_info for d in domains]), prefix="/api", **guarded
    )
    app.include_router(jobs_router([domain.job for domain in domains]), prefix="/api", **guarded)
    app.include_router(rerun_router(domains), prefix="/api", **guarded)
    for domain in domains:
        app.include_router(domain.router, prefix="/api", **guarded)
        for prefix, router in domain.extra_routers:
            app.include_router(router, prefix=prefix, **guarded)
    install_docs(app)
    install_page(app)
    return app
