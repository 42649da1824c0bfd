"""What ``python -m api serve`` says before it listens."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from fastapi import FastAPI

from api import __version__
from api.common.devices import describe
from api.common.settings import start_up_warnings

log = logging.getLogger("api")


def server_url(host: str, port: int) -> str:
    """Where a browser finds this server (this machine's name for a wildcard address)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    else:
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
    return f"http://{host}:{port}"


def docs_url(host: str, port: int) -> str:
    """Where a browser finds the Swagger UI."""
    return f"{server_url(host, port)}/docs"


def log_start_up(app: FastAPI) -> None:
    """One summary of what this server serves, logged once before it listens."""
    settings = app.state.services.settings
    services = app.state.services
    for warning in start_up_warnings(settings):
        log.warning("%s", warning)
    devices = []
    for device in app.state.engine.devices:
        info: dict[str, Any] = describe(device)
        if device.startswith("cuda"):
            devices.append(f"{device} ({info['name']}, {info['memory_total_mb'] // 1024} GiB)")
        else:
            devices.append(device)
    path_map = ", ".join(f"{client} -> {server}" for client, server in settings.path_map.items())
    if settings.api_keys:
        auth = f"on ({len(settings.api_keys)} API key(s))"
    else:
        auth = "off (no DD_API_KEYS)"
    if settings.downloads:
        downloads = "on (missing weights come from Hugging Face)"
    elif not settings.allow_downloads:
        downloads = "off (DD_ALLOW_DOWNLOADS=false)"
    else:
        downloads = "off (HF_HUB_OFFLINE)"
    domains = app.state.domains.values()
    models = [model for domain in domains for model in domain.describe_models(services)]
    log.info("deferred-diffusion %s", __version__)
    engine = app.state.engine
    if engine.broker is not None:
        log.info("jobs: queued on %s for the workers (python -m api worker)", engine.broker)
    else:
        log.info("devices: %s", ", ".join(devices))
    log.info("data dir: %s", services.data_dir)
    log.info("models dir: %s", services.models_dir)
    log.info("allowed roots: %s", ", ".join(str(root) for root in settings.roots))
    log.info("path map: %s", path_map or "none")
    log.info("auth: %s", auth)
    log.info("downloads: %s", downloads)
    unavailable = [model.name for model in models if not model.available]
    if unavailable:
        log.info("not available here: %s (GET /api/models says why)", ", ".join(unavailable))
    tiny = [model.name for model in models if model.weights.tiny]
    if tiny:
        log.warning(
            "serving TINY RANDOM WEIGHTS for %s: outputs are noise, for tests only",
            ", ".join(tiny),
        )
    log.info("web page: %s/", server_url(settings.host, settings.port))
    log.info("API docs: %s", docs_url(settings.host, settings.port))
