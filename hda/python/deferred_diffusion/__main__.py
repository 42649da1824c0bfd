"""``python -m deferred_diffusion``: jobs from farm scripts and PDG/TOPs.

    python -m deferred_diffusion submit images request.json --wait   # the job JSON on stdout
    python -m deferred_diffusion jobs --status running
    python -m deferred_diffusion cancel JOB_ID
    python -m deferred_diffusion models --domain images

Progress goes to stderr; a refusal or a job that did not succeed exits 1 with the
server's message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deferred_diffusion.client import Client, DeferredDiffusionError, Progress


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deferred_diffusion", description="Talk to a deferred-diffusion server."
    )
    parser.add_argument(
        "--server",
        help="the server's address (default: DD_SERVER_ADDRESS or http://127.0.0.1:5000)",
    )
    parser.add_argument("--api-key", help="an API key (default: DD_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="submit a job; prints the job as JSON")
    submit.add_argument("kind", help="images, videos, texts or agentic")
    submit.add_argument("request", help="the request as a JSON file ('-' reads stdin)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job to its end (progress on stderr)"
    )
    submit.add_argument(
        "--timeout", type=float, help="with --wait: give up after this many seconds"
    )

    get = commands.add_parser("get", help="one job as JSON")
    get.add_argument("job_id")

    jobs = commands.add_parser("jobs", help="recent jobs, newest first, one line each")
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--kind")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true", help="the jobs as JSON")

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")

    models = commands.add_parser("models", help="the server's models, one line each")
    models.add_argument("--domain")
    models.add_argument("--json", action="store_true", help="the models as JSON")
    return parser


def read_request(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {source} is not JSON: {error}") from None
    if not isinstance(request, dict):
        raise SystemExit(f"error: {source} must hold a JSON object (the request)")
    return request


def print_progress(progress: Progress) -> None:
    print(f"{progress.job_id} {progress.describe()}", file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = Client(args.server, args.api_key)
    try:
        if args.command == "submit":
            job = client.submit(args.kind, read_request(args.request))
            if args.wait:
                print(f"{job['id']} submitted", file=sys.stderr, flush=True)
                job = client.wait(job["id"], timeout=args.timeout, on_progress=print_progress)
            print_json(job)
            if args.wait and job["status"] != "succeeded":
                raise DeferredDiffusionError.from_job(job)
        elif args.command == "get":
            print_json(client.get(args.job_id))
        elif args.command == "jobs":
            found = client.jobs(args.status, args.kind, args.limit)
            if args.json:
                print_json(found)
            for job in [] if args.json else found:
                columns = (job["id"], f"{job['kind']:<8}", f"{job['model']:<20}", job["status"])
                print(*columns, job["created_at"])
        elif args.command == "cancel":
            print_json(client.cancel(args.job_id))
        elif args.command == "models":
            found = client.models(args.domain)
            if args.json:
                print_json(found)
            for model in [] if args.json else found:
                state = "available" if model["available"] else f"unavailable: {model['reason']}"
                modes = ",".join(model["modes"])
                print(f"{model['name']:<20} {model['domain']:<8} {modes:<30} {state}")
    except DeferredDiffusionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
