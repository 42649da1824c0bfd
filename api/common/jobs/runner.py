"""Runners: one thread per compute device, taking queued jobs in order."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from api.common.devices import free_memory, use_device
from api.common.errors import ApiError, JobCancelled, JobFailure, job_error
from api.common.jobs.schemas import Job, JobStatus
from api.common.jobs.store import DEVICE_QUEUE, JobStore

log = logging.getLogger("api.jobs")

JobHandler = Callable[[Job, "JobContext"], dict[str, Any]]


class Publish(Protocol):
    """Note that a job changed (only its progress, if ``progress``): JobEvents.publish."""

    def __call__(self, job_id: str, progress: bool = False) -> None: ...


class JobContext(ABC):
    """What a running job may use: its device, progress reports and the cancel check."""

    def __init__(self, job_id: str, device: str) -> None:
        self.job_id = job_id
        self.device = device

    @abstractmethod
    def progress(self, step: int, total: int, **detail: str) -> None:
        """Report a finished step (``detail``: e.g. ``text``, the answer so far, or
        ``status``, a provider's); raises JobCancelled when the job was cancelled."""

    @abstractmethod
    def check_cancelled(self) -> None:
        """Raise JobCancelled when the job was cancelled (or the server is stopping)."""


class StoreJobContext(JobContext):
    """A job run by a runner thread of the server process: progress and cancel requests
    live in the job store's memory."""

    def __init__(self, job_id: str, device: str, store: JobStore, publish: Publish) -> None:
        super().__init__(job_id, device)
        self.store = store
        self.publish = publish  # (job id, only its progress changed)

    def progress(self, step: int, total: int, **detail: str) -> None:
        self.store.set_progress(self.job_id, step, total, detail)
        self.publish(self.job_id, True)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled(self.job_id)


Outcome = tuple[JobStatus, dict[str, Any] | None, dict[str, str] | None]


def execute_job(handlers: dict[str, JobHandler], job: Job, context: JobContext) -> Outcome:
    """Run a job's handler: (status, result, error) whatever it raises."""
    try:
        context.check_cancelled()
        return JobStatus.succeeded, handlers[job.kind](job, context), None
    except JobCancelled:
        return JobStatus.cancelled, None, None
    except Exception as exc:
        if not isinstance(exc, JobFailure | ApiError):
            log.exception("job %s raised", job.id)
        return JobStatus.failed, None, job_error(exc)


def _details(result: dict[str, Any] | None, error: dict[str, str] | None) -> str:
    """The end of a job's log line: its error, or the timings its result reports."""
    if error:
        return f": {error['type']}: {error['message']}"
    timings = (result or {}).get("timings")
    if isinstance(timings, dict) and timings:
        shown = [
            f"{name} {value:.2f}" if isinstance(value, int | float) else f"{name} {value}"
            for name, value in timings.items()
        ]
        return f" ({', '.join(shown)})"
    return ""


class Runner(threading.Thread):
    """Takes the oldest queued job, runs its kind's handler on ``device``, records the end."""

    def __init__(
        self,
        device: str,
        store: JobStore,
        handlers: dict[str, JobHandler],
        publish: Publish,
        wake: threading.Condition,
        warm_up: Callable[[str], None] | None = None,
        queue: str = DEVICE_QUEUE,
    ) -> None:
        name = f"runner-{device}" if queue == DEVICE_QUEUE else f"runner-{queue}"
        super().__init__(name=name, daemon=True)
        self.queue = queue  # the jobs it takes: a device's, or those at external providers
        self.warm_up = warm_up
        self.warming = warm_up is not None
        self.current: str | None = None  # the id of the job running now
        self.device = device
        self.store = store
        self.handlers = handlers
        self.publish = publish
        self.wake = wake
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        with self.wake:
            self.wake.notify_all()

    def prepare(self) -> None:
        """Before the first job: bind the thread to its device, warm up the chosen models."""
        use_device(self.device)
        if self.warm_up is not None:
            try:
                self.warm_up(self.device)
            except Exception:  # a model that can't warm up fails its jobs later, clearly
                log.exception("warm-up on %s failed", self.device)
            finally:
                self.warming = False

    def finish_up(self) -> None:
        """After the last job (the server is stopping)."""

    def run(self) -> None:
        self.prepare()
        while not self.stopping.is_set():
            job = self.store.claim_next(self.name, self.queue)
            if job is None:
                with self.wake:
                    self.wake.wait(timeout=1.0)
                continue
            try:
                self.run_job(job)
            except Exception:  # recording the end failed (disk full?): keep the runner alive
                log.exception("runner %s could not finish job %s", self.name, job.id)
                with contextlib.suppress(Exception):
                    self.store.finish(
                        job.id,
                        JobStatus.failed,
                        error={
                            "type": "internal_error",
                            "message": "the job's end could not be recorded; see the server log",
                        },
                    )
        self.finish_up()

    def run_job(self, job: Job) -> None:
        self.publish(job.id)
        context = StoreJobContext(job.id, self.device, self.store, self.publish)
        what = f"{job.kind} {job.model} on {self.device}"
        queued_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
        log.info("job %s started: %s after %.2f s in the queue", job.id, what, queued_s)
        self.current = job.id
        started = time.perf_counter()
        try:
            status, result, error = self.execute(job, context)
        finally:
            self.current = None
        took = f"in {time.perf_counter() - started:.2f} s"
        if status != JobStatus.succeeded:
            free_memory()  # after the traceback (and the tensors its frames hold) is gone
        if status == JobStatus.cancelled and self.store.requeue_if_interrupted(job.id):
            log.info("job %s stopped for the shutdown %s: %s queued again", job.id, took, what)
        else:
            self.store.finish(job.id, status, result=result, error=error)
            log.info("job %s %s: %s %s%s", job.id, status, what, took, _details(result, error))
        self.publish(job.id)

    def execute(self, job: Job, context: StoreJobContext) -> Outcome:
        return execute_job(self.handlers, job, context)
