"""``python -m api serve | worker | tiny-models DIR | openapi``"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.common.settings import ServerSettings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.common.datadir import lock_data_dir
    from api.common.errors import Unavailable
    from api.common.logs import quiet_model_libraries
    from api.common.settings import SettingsError, load_settings
    from api.common.startup import log_start_up

    flags = {name: value for name in ("host", "port") if (value := getattr(args, name)) is not None}
    try:
        from api.domains import Settings

        settings = load_settings(Settings, **flags)
        lock_data_dir(settings.resolved_data_dir)  # held until the process ends
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        quiet_model_libraries(debug=settings.log_level == "debug")
        # torch.compile keeps what it builds here, so a restart does not compile again.
        cache = settings.compile_cache_dir or settings.resolved_data_dir / "compile-cache"
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
        from api.main import create_app

        app = create_app(settings)
        if settings.broker_url is not None:  # an unreachable broker stops the start, clearly
            app.state.engine.check_broker()
    except (SettingsError, Unavailable) as exc:
        print(f"deferred-diffusion: {exc}", file=sys.stderr)
        return 2
    log_start_up(app)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def worker(args: argparse.Namespace) -> int:
    """One Celery worker per device (DD_BROKER_URL): in this process for one device, else a
    child process each, plus one for jobs at external providers."""
    import subprocess

    from api.common.logs import quiet_model_libraries
    from api.common.settings import SettingsError, load_settings, masked_url

    try:
        from api.domains import Settings

        # A worker serves no HTTP: DD_HOST (0.0.0.0 in the image) is not its to check.
        settings = load_settings(Settings, host="127.0.0.1")
        if settings.broker_url is None:
            raise SettingsError(
                "invalid settings:\n  DD_BROKER_URL: a worker needs the broker the API server "
                "queues jobs on, e.g. DD_BROKER_URL=redis://redis-host:6379/0"
            )
        queues = _names(args.queues)
        models = _names(args.models)
        _check_models(settings, models)
        if args.device is None:
            from api.common.devices import compute_devices

            devices = compute_devices("auto")
        else:
            devices = [_device(args.device)]
        if queues != ["external"]:  # a worker for the providers' jobs runs no model
            from api.common.devices import check_precision

            check_precision(settings.precision, devices)
    except SettingsError as exc:
        print(f"deferred-diffusion worker: {exc}", file=sys.stderr)
        return 2
    gpus = [device for device in devices if device != "cpu"]
    if len(devices) == 1 and (gpus == [] or args.device is not None):
        device = devices[0]
        # A CPU worker also takes the providers' jobs; one keeping models, only theirs.
        default = ["device", "external"] if device == "cpu" else ["device"]
        if models:
            default = []
        logging.basicConfig(
            level=settings.log_level.upper(),
            format=f"%(asctime)s %(levelname)s %(name)s [{device}]: %(message)s",
        )
        quiet_model_libraries(debug=settings.log_level == "debug")
        from api.common.jobs.distributed.worker import Worker
        from api.common.media import limit_input_pixels

        limit_input_pixels(settings.max_input_pixels)
        Worker(settings, device, queues or default, models).main(settings.log_level)
        return 0
    # Every GPU: a worker process each on the devices' queue, and one for the providers.
    extra = [*(["--queues", *queues] if queues else []), *(["--models", *models] if models else [])]
    plans = [["--device", gpu, *extra] for gpu in gpus]
    if not queues:
        plans.append(["--device", "cpu", "--queues", "external"])
    children = [subprocess.Popen([sys.executable, "-m", "api", "worker", *plan]) for plan in plans]
    print(
        f"deferred-diffusion: {len(children)} workers on "
        f"{masked_url(settings.broker_url.get_secret_value())}",
        file=sys.stderr,
    )

    def stop_children(number: int, _: object) -> None:
        """SIGTERM (docker stop) or Ctrl-C: each worker puts its running job back, then ends."""
        for child in children:
            if child.poll() is None:
                child.send_signal(number)

    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    return max(child.wait() for child in children)


def _names(values: list[str] | None) -> list[str]:
    """``a,b c`` → [a, b, c]."""
    return [name for value in values or [] for name in value.split(",") if name.strip()]


def _check_models(settings: ServerSettings, models: list[str]) -> None:
    """``--models``: names of registered models (else SettingsError)."""
    from api.common.names import did_you_mean
    from api.common.services import Services
    from api.common.settings import SettingsError
    from api.domains import DOMAINS

    services = Services.from_settings(settings)
    known = [model.name for domain in DOMAINS for model in domain.describe_models(services)]
    for name in models:
        if name not in known:
            raise SettingsError(
                f"invalid --models: no model {name!r}{did_you_mean(name, known, quote=True)}"
            )


def _device(device: str) -> str:
    """``--device``: cpu or cuda[:N], a GPU this machine has (else SettingsError)."""
    from api.common.devices import compute_devices
    from api.common.settings import SettingsError

    device = device.strip().lower()
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise SettingsError(f"invalid --device {device!r}: cpu, cuda or cuda:N")
    return compute_devices(device)[0]


def tiny_models(args: argparse.Namespace) -> int:
    from api.common.names import did_you_mean
    from api.domains import DOMAINS

    builders = {name: domain for domain in DOMAINS for name in domain.tiny_model_names}
    names = list(builders)
    for name in args.only or []:
        if name not in names:
            print(
                f"python -m api tiny-models: no tiny model {name!r}"
                f"{did_you_mean(name, names, quote=True)}; the names are: {', '.join(names)}",
                file=sys.stderr,
            )
            return 2
    written = []
    for domain in DOMAINS:
        if domain.build_tiny_models is None:
            continue
        wanted = [name for name in args.only if builders[name] is domain] if args.only else None
        if wanted != []:
            written += domain.build_tiny_models(Path(args.dir), wanted)
    for name in written:
        print(Path(args.dir) / name)
    return 0


def openapi(_: argparse.Namespace) -> int:
    import tempfile

    from api.domains import Settings
    from api.main import create_app

    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(Settings(data_dir=Path(scratch)), devices=["cpu"])
        spec = app.openapi()
        app.state.engine.store.close()
    json.dump(spec, sys.stdout, indent=2)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    from api.common.settings import settings_help
    from api.domains import Settings

    parser = argparse.ArgumentParser(prog="python -m api", description="deferred-diffusion server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="start the server (settings from DD_* variables)",
        description="Start the server. Its settings come from the environment variables below; "
        "--host and --port override DD_HOST and DD_PORT.",
        epilog=settings_help(Settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_parser.add_argument("--host", help="address to listen on (overrides DD_HOST)")
    serve_parser.add_argument("--port", type=int, help="port to listen on (overrides DD_PORT)")
    tiny = commands.add_parser("tiny-models", help="write tiny random-weight models for tests")
    tiny.add_argument("dir", help="models folder (use it as DD_MODELS_DIR)")
    tiny.add_argument("--only", nargs="*", help="model names (default: all)")
    commands.add_parser("openapi", help="print the OpenAPI spec as JSON")
    worker_parser = commands.add_parser(
        "worker",
        help="run jobs queued on DD_BROKER_URL (scale-out: Celery on Redis)",
        description="Run the jobs an API server started with DD_BROKER_URL queues, one Celery "
        "worker per device. Same settings (DD_*) as the server: share DD_BROKER_URL, the "
        "models, the data dir and the show storage with it.",
        epilog=settings_help(Settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker_parser.add_argument(
        "--device",
        help="cuda:N or cpu (default: every GPU, a worker each, plus one CPU worker for the "
        "providers' jobs; the CPU alone where there is no GPU)",
    )
    worker_parser.add_argument(
        "--queues",
        nargs="+",
        help="queues to take jobs from: device (models on this device), external (jobs at "
        "providers); default: device, plus external on the CPU",
    )
    worker_parser.add_argument(
        "--models",
        nargs="+",
        help="also take these models' own queues: while this worker is alive, their jobs "
        "come only to workers that name them (keeps a big model resident)",
    )
    args = parser.parse_args(argv)
    run = {"serve": serve, "worker": worker, "tiny-models": tiny_models, "openapi": openapi}
    return run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
