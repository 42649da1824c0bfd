"""``python -m api worker``: a Celery worker running the jobs of one device.

One process per device (``--pool solo``: the job runs in the worker's main thread, so the
models it loads stay resident for the next one), taking one message at a time. Beside it a
thread beats (a key in Redis that expires unless renewed, carrying what the worker does)
and reaps the jobs of workers whose beat stopped. A message only says which queue has work:
the worker takes that queue's first job in the store (by priority, then age), its request
as validated by the API server, and its handler resolves its paths against this worker's
own allowed roots, reading and writing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from celery import signals

from api.common.devices import free_memory, use_device
from api.common.errors import JobCancelled
from api.common.jobs.distributed.engine import (
    RUN_JOB,
    CeleryJobEngine,
    celery_queue,
    heartbeat_ttl,
    model_queue,
)
from api.common.jobs.runner import JobContext, JobHandler, execute_job
from api.common.jobs.schemas import JobStatus
from api.common.services import Services
from api.common.settings import ServerSettings

log = logging.getLogger("api.worker")


class WorkerJobContext(JobContext):
    """A job on a worker: progress to the store (announced to the API), and a look at the
    store for a cancel request at each step. A job taken from this worker (its heartbeat was
    missed, the job runs elsewhere now) or a worker shutting down stops it too."""

    def __init__(self, job_id: str, worker: Worker) -> None:
        super().__init__(job_id, worker.device)
        self.worker = worker

    def progress(self, step: int, total: int, **detail: str) -> None:
        info = {"step": step, "total": total} | detail
        ttl = heartbeat_ttl(self.worker.settings)
        self._stop_if(*self.worker.store.report_progress(self.job_id, self.worker.name, info, ttl))

    def check_cancelled(self) -> None:
        self._stop_if(*self.worker.store.should_stop(self.job_id, self.worker.name))

    def _stop_if(self, cancel_requested: bool, taken: bool) -> None:
        if cancel_requested or taken or self.worker.stopping.is_set():
            raise JobCancelled(self.job_id)


class Worker:
    """One device's worker: for each message, claims the first job of the message's queue,
    runs it, records its end."""

    def __init__(
        self,
        settings: ServerSettings,
        device: str,
        queues: list[str],
        models: list[str],
    ) -> None:
        self.settings = settings
        self.device = device
        self.queues = queues + [model_queue(model) for model in models]
        self.models = models
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = f"{device} on {self.host} (pid {self.pid})"
        self.engine = CeleryJobEngine.from_settings(settings)
        self.store = self.engine.store
        self.services = Services.from_settings(settings)
        self.services.jobs = self.engine  # a job asking another domain for work
        self.handlers: dict[str, JobHandler] = {}
        self.current: str | None = None
        # until it takes jobs: importing the model libraries, loading DD_WARMUP models
        self.warming_up = True
        self.stopping = threading.Event()
        self._beating = threading.Event()

    def info(self) -> dict[str, Any]:
        """What the heartbeat says (GET /health lists it)."""
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "device": self.device,
            "queues": self.queues,
            "models": self.models,
            "current_job": self.current,
            "warming_up": self.warming_up,
            "loaded_models": sorted(self.services.loaded_models()),
            "last_heartbeat": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }

    def beat(self) -> None:
        self.store.beat(self.name, self.info(), heartbeat_ttl(self.settings))

    def _beat_forever(self) -> None:
        """Beat at a steady rate (the time a beat takes is not added to the interval)."""
        interval = self.settings.worker_heartbeat_seconds
        next_beat = time.monotonic() + interval
        while not self._beating.wait(max(0.0, next_beat - time.monotonic())):
            next_beat = max(next_beat + interval, time.monotonic())  # no burst after a stall
            try:
                self.beat()
                self.engine.reap()
            except Exception as exc:  # Redis restarting: beat again next time
                log.warning("heartbeat failed: %s", exc)

    def run(self, sent_by: str, queue: str | None = None) -> None:
        """Run the first job of ``queue`` (a message from before priorities names no queue:
        its job's), unless none is queued there (its job was cancelled, or a message came
        twice). ``sent_by``: the job whose submission sent the message."""
        queue = queue or self.store.queue_of(sent_by)
        job = self.store.claim_next(queue, self.name) if queue else None
        if job is None:
            log.info("message of job %s: no job queued in %s, skipped", sent_by, queue)
            return
        job_id = job.id
        self.current = job_id
        self.beat()  # /health shows the job at once
        log.info("job %s started: %s %s on %s", job_id, job.kind, job.model, self.device)
        try:
            status, result, error = execute_job(self.handlers, job, WorkerJobContext(job_id, self))
        finally:
            self.current = None
        if status != JobStatus.succeeded:
            free_memory()
        if status == JobStatus.cancelled and self.stopping.is_set():
            if self.store.requeue(job_id, self.name) == "requeued":
                self.engine.send(job_id)
                log.info("job %s stopped for the worker's shutdown: queued again", job_id)
                return
        if self.store.finish(job_id, self.name, status, result, error):
            log.info("job %s %s", job_id, status.value)
        else:
            log.warning("job %s was taken from this worker (heartbeat missed): dropped", job_id)
        self.beat()

    def main(self, loglevel: str) -> None:
        """Warm up, then take messages until stopped (SIGTERM/SIGINT: the running job stops
        at its next step and is queued again)."""
        from api.main import job_functions

        self.engine.check_broker()
        use_device(self.device)
        self.handlers, warm_up = job_functions(self.services)
        self.beat()  # /health lists it from now on, warming up until it takes jobs
        if warm_up is not None:
            try:
                warm_up(self.device)
            except Exception:  # a model that can't warm up fails its jobs later, clearly
                log.exception("warm-up on %s failed", self.device)
        app = self.engine.celery

        @app.task(name=RUN_JOB, acks_late=True, ignore_result=True)
        def run_job(job_id: str, queue: str | None = None) -> None:
            self.run(job_id, queue)

        @signals.worker_ready.connect(weak=False)
        def ready(**_: Any) -> None:  # consuming messages now: /health says so at once
            self.warming_up = False
            self.beat()

        @signals.worker_shutting_down.connect(weak=False)
        def shutting_down(**_: Any) -> None:
            self.stopping.set()

        beating = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
        beating.start()
        log.info(
            "worker %s: queues %s, broker %s",
            self.name,
            ", ".join(self.queues),
            self.engine.broker,
        )
        try:
            app.worker_main(
                [
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    "--prefetch-multiplier=1",
                    f"--queues={','.join(celery_queue(queue) for queue in self.queues)}",
                    f"--hostname=dd-{self.device.replace(':', '')}-{self.pid}@{self.host}",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    f"--loglevel={loglevel.upper()}",
                ]
            )
        finally:
            self._beating.set()
            beating.join(5)
            self.store.leave(self.name)
            self.engine.close()
