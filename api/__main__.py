"""``python -m api serve | tiny-models DIR | openapi``"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.common.datadir import lock_data_dir
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
    except SettingsError as exc:
        print(f"deferred-diffusion: {exc}", file=sys.stderr)
        return 2
    log_start_up(app)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


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
    args = parser.parse_args(argv)
    return {"serve": serve, "tiny-models": tiny_models, "openapi": openapi}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
