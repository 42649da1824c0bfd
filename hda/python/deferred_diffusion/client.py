"""The HTTP client: submit a job, follow it (Server-Sent Events, or polling), cancel it,
upload an input. httpx only, so it runs in Houdini's and Nuke's Python and on the farm."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_ADDRESS = "http://127.0.0.1:5000"
FINISHED = ("succeeded", "failed", "cancelled")
# The submit route of each kind of job (the job's ``kind``); others are /api/<kind>.
ROUTES = {"agentic": "/api/agentic/sequences"}
# The server sends a keepalive comment after 15 s without news: a read that waits much
# longer than that means the connection is gone.
STREAM_READ_TIMEOUT = 60.0

Job = dict[str, Any]


class DeferredDiffusionError(Exception):
    """A refusal by the server (``status`` is the HTTP status), or a job that did not
    succeed (``status`` is None and ``job`` is the finished job). ``type``, ``message`` and
    ``field`` are the server's."""

    def __init__(
        self,
        message: str,
        type: str = "error",
        field: str | None = None,
        status: int | None = None,
        job: Job | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.field = field
        self.status = status
        self.job = job

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.type}{where}: {self.message}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> DeferredDiffusionError:
        try:
            error = response.json()["error"]
            return cls(
                str(error["message"]),
                str(error.get("type") or "error"),
                error.get("field"),
                response.status_code,
            )
        except (ValueError, KeyError, TypeError):
            text = response.text.strip() or response.reason_phrase
            return cls(
                f"HTTP {response.status_code}: {text}", "http_error", None, response.status_code
            )

    @classmethod
    def from_job(cls, job: Job) -> DeferredDiffusionError:
        error = job.get("error") or {}
        if job["status"] == "cancelled":
            return cls(f"job {job['id']} was cancelled", "cancelled", job=job)
        message = error.get("message") or f"job {job['id']} {job['status']}"
        return cls(message, error.get("type") or job["status"], job=job)


@dataclass(frozen=True)
class Progress:
    """How a job is going, as its events tell it."""

    job_id: str
    status: str  # queued, running, succeeded, failed, cancelled
    queue_position: int | None = None
    step: int | None = None
    total: int | None = None
    text: str | None = None  # text jobs: the answer so far
    detail: str | None = None  # jobs at a provider: its status

    @property
    def fraction(self) -> float | None:
        """Steps done, 0 to 1, when known."""
        if self.step is None or not self.total:
            return None
        return min(1.0, self.step / self.total)

    def describe(self) -> str:
        """One line for a status bar."""
        if self.status == "queued":
            where = f" (position {self.queue_position})" if self.queue_position else ""
            return f"queued{where}"
        if self.step is not None and self.total:
            extra = f" - {self.detail}" if self.detail else ""
            return f"{self.status} {self.step}/{self.total}{extra}"
        return self.status


ProgressCallback = Callable[[Progress], None]


def route(kind: str) -> str:
    """The submit route of a kind of job."""
    return ROUTES.get(kind, f"/api/{kind}")


class Client:
    """A deferred-diffusion server. ``base_url`` defaults to ``DD_SERVER_ADDRESS`` (else
    http://127.0.0.1:5000), ``api_key`` to ``DD_API_KEY``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("DD_SERVER_ADDRESS") or DEFAULT_ADDRESS).rstrip(
            "/"
        )
        key = api_key if api_key is not None else os.environ.get("DD_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the calls ---------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; a 4xx/5xx raises DeferredDiffusionError with the server's error."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
        if response.status_code >= 400:
            raise DeferredDiffusionError.from_response(response)
        return response.json()

    def _unreachable(self, error: Exception) -> DeferredDiffusionError:
        return DeferredDiffusionError(
            f"cannot reach the server at {self.base_url}: {error} (is it running? "
            "DD_SERVER_ADDRESS says where it is)",
            "connection_error",
        )

    def submit(self, kind: str, request: dict[str, Any], wait: float = 0) -> Job:
        """Queue a job of ``kind`` (images, videos, texts, agentic): the job, as queued
        (or finished, when it ends within ``wait`` seconds)."""
        params = {"wait": wait} if wait else None
        timeout = self.timeout + wait
        return self.request("POST", route(kind), json=request, params=params, timeout=timeout)

    def get(self, job_id: str) -> Job:
        return self.request("GET", f"/api/jobs/{job_id}")

    def jobs(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[Job]:
        """Recent jobs, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if kind:
            params["kind"] = kind
        return self.request("GET", "/api/jobs", params=params)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one never runs, a running one stops at its next step. A
        finished job raises DeferredDiffusionError (status 409)."""
        return self.request("DELETE", f"/api/jobs/{job_id}")

    def models(self, domain: str | None = None) -> list[dict[str, Any]]:
        """The server's models (GET /api/models), of one domain if given."""
        models = self.request("GET", "/api/models")
        return [m for m in models if domain is None or m["domain"] == domain]

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def upload(self, path: str | Path) -> str:
        """Upload an input image (for machines without the shared storage): a path the
        server takes as an input."""
        path = Path(path)
        with path.open("rb") as file:
            answer = self.request(
                "POST", "/api/files", files={"file": (path.name, file)}, timeout=600
            )
        return answer["path"]

    def download(self, url: str, path: str | Path) -> Path:
        """Save an output (its ``url`` in a job's result) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise DeferredDiffusionError.from_response(response)
                with path.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
        return path

    # --- following a job ---------------------------------------------------------------

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll: bool = False,
    ) -> Job:
        """Follow a job until it ends: the finished job, whatever its status (``run``
        raises on failure). ``on_progress`` gets a Progress at each change, from the job's
        event stream (or by polling, with ``poll`` or when the stream breaks). Past
        ``timeout`` seconds: DeferredDiffusionError of type ``timeout`` (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not poll:
            try:
                for progress in self._events(job_id, deadline):
                    if on_progress is not None:
                        on_progress(progress)
            except (httpx.TransportError, httpx.StreamError):
                pass  # the stream broke: polling takes over
        return self._poll(job_id, deadline, on_progress)

    def run(
        self,
        kind: str,
        request: dict[str, Any],
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        on_submitted: Callable[[Job], None] | None = None,
    ) -> Job:
        """Submit and wait: the succeeded job. A refusal, a failed or cancelled job raise
        DeferredDiffusionError. ``on_submitted`` gets the queued job (its id, to cancel)."""
        job = self.submit(kind, request)
        if on_submitted is not None:
            on_submitted(job)
        job = self.wait(job["id"], timeout=timeout, on_progress=on_progress)
        if job["status"] != "succeeded":
            raise DeferredDiffusionError.from_job(job)
        return job

    def _events(self, job_id: str, deadline: float | None) -> Iterator[Progress]:
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        with self.http.stream("GET", f"/api/jobs/{job_id}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise DeferredDiffusionError.from_response(response)
            status, position = "queued", None
            for event, data in parse_events(response.iter_lines()):
                if event == "status":
                    status, position = data["status"], data.get("queue_position")
                    yield Progress(job_id, status, position)
                elif event == "progress":
                    yield Progress(
                        job_id,
                        status,
                        position,
                        data.get("step"),
                        data.get("total"),
                        data.get("text"),
                        data.get("status"),
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise _timeout(job_id)

    def _poll(
        self, job_id: str, deadline: float | None, on_progress: ProgressCallback | None
    ) -> Job:
        last = None
        while True:
            remaining = 30.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout(job_id)
            wait = max(0.0, min(remaining, 1.0 if on_progress else 30.0))
            job = self.request(
                "GET", f"/api/jobs/{job_id}", params={"wait": wait}, timeout=self.timeout + wait
            )
            progress = progress_of(job)
            if on_progress is not None and progress != last:
                on_progress(progress)
            last = progress
            if job["status"] in FINISHED:
                return job


def progress_of(job: Job) -> Progress:
    """A job's progress as it stands."""
    steps = job.get("progress") or {}
    return Progress(
        job["id"],
        job["status"],
        job.get("queue_position"),
        steps.get("step"),
        steps.get("total"),
        steps.get("text"),
        steps.get("status"),
    )


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events stream; comments skipped."""
    event = "message"
    data: list[str] = []  # the lines of one event's data
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))


def _timeout(job_id: str) -> DeferredDiffusionError:
    return DeferredDiffusionError(
        f"job {job_id} did not end in time; it goes on (cancel it with its id)", "timeout"
    )
