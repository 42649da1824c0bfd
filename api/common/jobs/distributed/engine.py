"""The distributed engine (DD_BROKER_URL): jobs handed to Celery workers through Redis.

The API server keeps no job itself: it writes each job to the shared store (Redis) and
sends Celery a message on the job's queue, saying that the queue has one more job; a
worker (``python -m api worker``) taking the message claims the first job of that queue
in the store (the highest priority, the oldest of those: not necessarily the message's),
runs it and records its end. The same engine runs inside the workers,
where a job may ask another domain for work (``run_and_wait``) and where the reaper runs
too, so a dead worker's job is noticed even while the API server is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from api.common.errors import Unavailable
from api.common.jobs.distributed.store import EVENTS, RedisJobStore, connect
from api.common.jobs.engine import BaseJobEngine
from api.common.jobs.schemas import Job
from api.common.jobs.store import DEVICE_QUEUE
from api.common.settings import ServerSettings, masked_url

log = logging.getLogger("api.jobs")

# The one Celery task: run the next job of this queue (args: the id of the job whose
# submission sent it, for the logs, and the queue).
RUN_JOB = "deferred_diffusion.run_job"
CELERY_QUEUE_PREFIX = "dd."  # Celery's queue of a job queue: dd.device, dd.external...
# Seconds after which Redis hands an unacknowledged message out again: long enough for any
# job. It only matters for a message whose worker died, and those jobs are requeued by the
# heartbeat reaper long before (a message delivered twice finds its job taken and is dropped).
VISIBILITY_TIMEOUT = 24 * 3600


def model_queue(model: str) -> str:
    """The queue of a model's device jobs when a worker keeps it resident (``--models``)."""
    return f"{DEVICE_QUEUE}.{model}"


def celery_queue(queue: str) -> str:
    return f"{CELERY_QUEUE_PREFIX}{queue}"


def celery_app(broker_url: str) -> Celery:
    """The Celery app of the API server and the workers: late acknowledgement (a message
    is done only when its job is), one message at a time per worker, no result backend
    (jobs' results live in the job store)."""
    app = Celery("deferred-diffusion", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=celery_queue(DEVICE_QUEUE),
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_pool_limit=4,
    )
    return app


def heartbeat_ttl(settings: ServerSettings) -> float:
    """How long a worker's heartbeat lives: three beats."""
    return 3 * settings.worker_heartbeat_seconds


class CeleryJobEngine(BaseJobEngine):
    """Submit through Celery, read and cancel in the shared store, follow through its
    pub/sub channel; reap jobs of workers whose heartbeat stopped."""

    store: RedisJobStore

    def __init__(self, settings: ServerSettings, store: RedisJobStore, celery: Celery) -> None:
        super().__init__(store, devices=[])
        assert settings.broker_url is not None
        self.settings = settings
        self.broker = masked_url(settings.broker_url.get_secret_value())
        self.celery = celery
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._workers: tuple[float, list[dict[str, Any]]] = (0.0, [])
        # Told the live workers after each look (the API server: where models are loaded).
        self.on_workers: Callable[[list[dict[str, Any]]], None] | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> CeleryJobEngine:
        assert settings.broker_url is not None
        url = settings.broker_url.get_secret_value()
        return cls(settings, RedisJobStore(connect(url)), celery_app(url))

    def check_broker(self) -> None:
        """Fail clearly (without the password) when the broker's Redis can't be reached."""
        try:
            self.store.redis.ping()
        except redis.RedisError as exc:
            raise Unavailable(
                f"the job broker {self.broker} (DD_BROKER_URL) can't be reached: "
                f"{type(exc).__name__}"
            ) from None

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Follow the store's changes and watch the workers' heartbeats; the jobs of a dead
        API server keep running on the workers, so nothing is failed here."""
        self.check_broker()
        self.events.bind(loop)
        self.stopping.clear()
        self.threads = [
            threading.Thread(target=self._listen, name="job-events", daemon=True),
            threading.Thread(target=self._watch, name="job-reaper", daemon=True),
        ]
        for thread in self.threads:
            thread.start()
        return 0

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(min(timeout, 5.0))
        self.threads = []

    def _listen(self) -> None:
        """Turn the store's change notices into wake-ups of this process's waiting clients."""
        while not self.stopping.is_set():
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(EVENTS)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        job_id, _, what = str(message["data"]).partition(" ")
                        self.events.publish(job_id, what == "progress")
                pubsub.close()
            except redis.RedisError as exc:  # broker restarting: waiting clients poll meanwhile
                log.warning("job events from %s lost (%s); reconnecting", self.broker, exc)
                self.stopping.wait(1.0)

    def _watch(self) -> None:
        while not self.stopping.wait(self.settings.worker_heartbeat_seconds):
            try:
                self.reap()
                workers = self.workers()
                if self.on_workers is not None:
                    self.on_workers(workers)
            except redis.RedisError as exc:
                log.warning("can't watch the workers at %s: %s", self.broker, exc)

    def reap(self) -> int:
        """Jobs running on workers whose heartbeat stopped: queued again (on the same queue,
        in their old place), or failed as interrupted once DD_JOB_ATTEMPTS workers died
        running them. Returns how many were handled."""
        handled = 0
        for job_id, worker in self.store.running().items():
            outcome = self.store.requeue(job_id, worker, self.settings.job_attempts, True)
            if outcome == "requeued":
                self.send(job_id)
                log.warning("job %s: worker %s stopped beating; queued again", job_id, worker)
            elif outcome == "failed":
                log.warning(
                    "job %s: worker %s stopped beating; failed (interrupted)", job_id, worker
                )
            handled += bool(outcome)
        return handled

    def send(self, job_id: str) -> None:
        """Tell the workers of a job's queue that it has one more job (submitted, or
        queued again)."""
        queue = self.store.queue_of(job_id) or DEVICE_QUEUE
        self.celery.send_task(RUN_JOB, args=[job_id, queue], queue=celery_queue(queue))

    def route(self, model: str, queue: str) -> str:
        """A device job goes to its model's own queue while a live worker keeps that model
        (``--models``), else to the devices' queue; a provider's to the external queue."""
        if queue != DEVICE_QUEUE:
            return queue
        if any(model in worker.get("models", []) for worker in self.live_workers()):
            return model_queue(model)
        return queue

    def live_workers(self) -> list[dict[str, Any]]:
        """The live workers, looked up at most once per heartbeat (routing reads them)."""
        seen, workers = self._workers
        if time.monotonic() - seen > self.settings.worker_heartbeat_seconds:
            workers = self.workers()
        return workers

    def submit(
        self, kind: str, model: str, request: dict[str, Any], queue: str = DEVICE_QUEUE
    ) -> Job:
        self.check_callback(request)
        job = None
        try:
            job = self.store.submit(kind, model, request, self.route(model, queue))
            self.send(job.id)
        except (redis.RedisError, OSError) as exc:
            if job is not None:  # stored but no message: it would wait forever
                with contextlib.suppress(Exception):
                    self.store.cancel(job.id)
            raise Unavailable(
                f"the job broker {self.broker} can't be reached ({type(exc).__name__}); "
                "nothing was queued"
            ) from None
        return job

    def cancel(self, job_id: str) -> Job:
        return self.store.cancel(job_id)

    def workers(self) -> list[dict[str, Any]]:
        workers = self.store.workers()
        self._workers = (time.monotonic(), workers)
        return workers

    def queue_depths(self) -> dict[str, dict[str, int]]:
        return self.store.queue_depths()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.celery.close()
        self.store.close()
