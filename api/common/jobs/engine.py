"""The job engine: the store, one runner per device, and change notices for waiting clients."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any, Protocol

from api.common.errors import NotFound
from api.common.jobs.process import DeviceProcesses, ProcessRunner
from api.common.jobs.runner import JobHandler, Runner
from api.common.jobs.schemas import Job
from api.common.jobs.store import DEVICE_QUEUE, EXTERNAL_QUEUE, JobStore
from api.common.webhooks import check_callback_url


class JobFeed:
    """What a watcher of every job (the job list's SSE) has yet to hear of: the jobs that
    changed since it last looked, each with whether only its progress did."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self._jobs: dict[str, bool] = {}  # job id → only its progress changed

    def note(self, job_id: str, progress: bool) -> None:
        self._jobs[job_id] = self._jobs.get(job_id, True) and progress
        self.changed.set()

    def take(self) -> dict[str, bool]:
        """The jobs changed since the last call (id → only its progress), forgotten here."""
        jobs, self._jobs = self._jobs, {}
        self.changed.clear()
        return jobs


class JobEvents:
    """Wakes clients waiting on a job (``wait=``, SSE) when a runner thread changes it.

    The watchers belong to the event loop and are only touched there; a runner thread
    learns whether anyone watches a job from a count kept behind a lock, and wakes them
    through ``call_soon_threadsafe``. Progress notices (one per denoising step) go only to
    watchers that asked for them (SSE): a ``wait=`` call wakes on status changes alone, so
    the runner thread is not made to hand over the GIL once a step for nothing. Feeds
    (``watch_all``) hear of every job's changes, progress included.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchers: dict[str, dict[asyncio.Event, bool]] = defaultdict(dict)  # loop's
        self._feeds: set[JobFeed] = set()  # loop's
        self._lock = threading.Lock()
        self._interest: dict[str, list[int]] = {}  # job id → [watchers, progress watchers]
        self._feed_count = 0  # behind the lock: how many feeds there are

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, job_id: str, progress: bool = False) -> None:
        """Thread-safe: note that ``job_id`` changed (only its progress, if ``progress``)."""
        loop = self._loop
        with self._lock:
            watchers, progress_watchers = self._interest.get(job_id, (0, 0))
            feeds = self._feed_count
        wanted = feeds or (progress_watchers if progress else watchers)
        if loop is None or loop.is_closed() or not wanted:
            return
        with contextlib.suppress(RuntimeError):  # loop closing during shutdown
            loop.call_soon_threadsafe(self._wake, job_id, progress)

    def _wake(self, job_id: str, progress: bool) -> None:
        for event, wants_progress in self._watchers.get(job_id, {}).items():
            if wants_progress or not progress:
                event.set()
        for feed in self._feeds:
            feed.note(job_id, progress)

    @contextlib.contextmanager
    def watch(self, job_id: str, progress: bool = False) -> Iterator[asyncio.Event]:
        """An event set whenever ``job_id`` changes (call from the event loop)."""
        event = asyncio.Event()
        self._watchers[job_id][event] = progress
        self._count(job_id, progress, +1)
        try:
            yield event
        finally:
            self._count(job_id, progress, -1)
            self._watchers[job_id].pop(event, None)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    @contextlib.contextmanager
    def watch_all(self) -> Iterator[JobFeed]:
        """A feed of every job's changes, progress included (call from the event loop)."""
        feed = JobFeed()
        self._feeds.add(feed)
        with self._lock:
            self._feed_count += 1
        try:
            yield feed
        finally:
            with self._lock:
                self._feed_count -= 1
            self._feeds.discard(feed)

    def _count(self, job_id: str, progress: bool, change: int) -> None:
        with self._lock:
            counts = self._interest.setdefault(job_id, [0, 0])
            counts[0] += change
            counts[1] += change if progress else 0
            if counts[0] == 0:
                del self._interest[job_id]


class JobRecords(Protocol):
    """Where an engine keeps its jobs (the embedded JobStore, or Redis when distributed):
    what the HTTP side reads."""

    def get(self, job_id: str) -> Job: ...

    def list(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[Job]: ...

    def queue_depth(self) -> dict[str, int]: ...

    def queue_positions(self) -> dict[str, int]: ...

    def remove_finished(self, before: datetime) -> builtins.list[Job]: ...

    def close(self) -> None: ...


class BaseJobEngine(ABC):
    """What the HTTP side and the domains use, whichever engine runs the jobs: submit, look
    up, cancel, wait for and follow jobs. ``JobEngine`` runs them in this process;
    ``api.common.jobs.distributed.CeleryJobEngine`` hands them to Celery workers."""

    # A waiting client re-reads the job at least this often, even without a notice.
    POLL_SECONDS = 1.0
    # A job waiting for a job it asked for (run_and_wait) looks this often.
    RUN_AND_WAIT_POLL_SECONDS = 0.05
    # A follower with nothing new gets a comment line this often (SSE keep-alive).
    KEEPALIVE_SECONDS = 15.0
    # The job list's feed sends what changed at most this often (progress comes per step).
    FEED_INTERVAL_SECONDS = 0.1

    broker: str | None = None  # where a distributed engine queues jobs (password masked)
    callback_hosts: tuple[str, ...] = ()  # DD_CALLBACK_HOSTS: where webhooks may go

    def __init__(self, store: JobRecords, devices: list[str]) -> None:
        self.store = store
        self.devices = devices  # the devices this process runs jobs on
        self.runners: list[Runner] = []
        self.events = JobEvents()

    @abstractmethod
    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Start running (or handing out) jobs; returns how many jobs a dead process left
        running were failed."""

    @abstractmethod
    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs."""

    @abstractmethod
    def submit(
        self, kind: str, model: str, request: dict[str, Any], queue: str = DEVICE_QUEUE
    ) -> Job:
        """Queue a job: on the devices, or (``EXTERNAL_QUEUE``) for a provider's model."""

    def check_callback(self, request: dict[str, Any]) -> None:
        """Refuse (422 on ``callback_url``, before anything is queued) a webhook to a host
        not in DD_CALLBACK_HOSTS; each engine's ``submit`` asks first."""
        check_callback_url(request.get("callback_url"), self.callback_hosts)

    @abstractmethod
    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job never runs; a running one stops at its next step."""

    def workers(self) -> list[dict[str, Any]] | None:
        """The workers seen running jobs (distributed engines); None when this process runs
        them."""
        return None

    def queue_depths(self) -> dict[str, dict[str, int]] | None:
        """Queued and running jobs per queue (distributed engines), or None."""
        return None

    def run_and_wait(
        self,
        kind: str,
        model: str,
        request: dict[str, Any],
        check_cancelled: Callable[[], None],
        queue: str = DEVICE_QUEUE,
    ) -> Job:
        """From a thread (a job asking another domain for work): submit a job and wait for
        its end. ``check_cancelled`` raising (the asking job was cancelled) cancels it too."""
        job = self.submit(kind, model, request, queue)
        while not job.finished:
            try:
                check_cancelled()
            except BaseException:
                with contextlib.suppress(Exception):
                    self.cancel(job.id)
                raise
            time.sleep(self.RUN_AND_WAIT_POLL_SECONDS)
            job = self.store.get(job.id)
        return job

    async def get(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.store.get, job_id)

    async def wait(self, job_id: str, seconds: float) -> Job:
        """The job once finished, or as it stands after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with self.events.watch(job_id) as changed:
            while True:
                changed.clear()
                job = await self.get(job_id)
                left = deadline - loop.time()
                if job.finished or left <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, self.POLL_SECONDS))

    async def follow(self, job_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event, data) pairs: ``status`` (also when the queue position moves) and
        ``progress`` as they change, then ``result`` or ``error`` (a cancelled job ends on
        its ``status``); ``keepalive`` after a quiet spell, so proxies keep the stream open.
        Ends when the job does."""
        loop = asyncio.get_running_loop()
        last_state = last_progress = None
        quiet_since = loop.time()
        with self.events.watch(job_id, progress=True) as changed:
            while True:
                changed.clear()
                job = await self.get(job_id)
                events: list[tuple[str, dict[str, Any]]] = []
                if (job.status, job.queue_position) != last_state:
                    last_state = (job.status, job.queue_position)
                    events.append(
                        (
                            "status",
                            {
                                "id": job.id,
                                "status": job.status,
                                "queue_position": job.queue_position,
                            },
                        )
                    )
                if job.progress is not None and job.progress != last_progress:
                    last_progress = job.progress
                    events.append(("progress", job.progress.model_dump()))
                if job.finished:
                    if job.result is not None:
                        events.append(("result", job.result))
                    if job.error is not None:
                        events.append(("error", job.error.model_dump()))
                if not events and loop.time() - quiet_since >= self.KEEPALIVE_SECONDS:
                    events.append(("keepalive", {}))
                for event in events:
                    yield event
                    quiet_since = loop.time()
                if job.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.POLL_SECONDS)

    async def follow_all(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> AsyncIterator[tuple[str, Any]]:
        """(event, data) pairs for a live job list: first ``jobs``, the recent jobs as
        ``GET /api/jobs`` lists them (``status``, ``kind``, ``limit``); then, as they
        happen, ``job`` (a job submitted or changed, whatever its status and kind: the
        client keeps those it shows), ``progress`` ({id, progress}) and ``queue`` (the
        queue position of each queued job, by id, after a job joined or left the queue);
        ``keepalive`` after a quiet spell. Never ends by itself."""
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        with self.events.watch_all() as feed:
            jobs = await asyncio.to_thread(self.store.list, status, kind, limit)
            yield "jobs", jobs
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.changed.wait(), self.KEEPALIVE_SECONDS)
                changed = feed.take()
                if not changed:
                    if loop.time() - quiet_since >= self.KEEPALIVE_SECONDS:
                        yield "keepalive", {}
                        quiet_since = loop.time()
                    continue
                for job_id, only_progress in changed.items():
                    try:
                        job = await self.get(job_id)
                    except NotFound:
                        continue
                    if not only_progress:
                        yield "job", job
                    elif job.progress is not None:
                        yield "progress", {"id": job.id, "progress": job.progress.model_dump()}
                if not all(changed.values()):
                    yield "queue", await asyncio.to_thread(self.store.queue_positions)
                quiet_since = loop.time()
                # Progress comes once a step: a client hears of it at most this often.
                await asyncio.sleep(self.FEED_INTERVAL_SECONDS)


class JobEngine(BaseJobEngine):
    """The embedded engine: jobs in SQLite, run on one runner per device in this process."""

    store: JobStore

    def __init__(
        self,
        store: JobStore,
        handlers: dict[str, JobHandler],
        devices: list[str],
        warm_up: Callable[[str], None] | None = None,
        processes: DeviceProcesses | None = None,
    ):
        super().__init__(store, devices)
        self.handlers = handlers
        self.warm_up = warm_up  # run by each runner (with its device) before its first job
        self.processes = processes  # when given, each device's jobs run in a process of its own
        self._wake = threading.Condition()

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Fail jobs a dead process left running, then start the runners; returns that count."""
        self.events.bind(loop)
        interrupted = self.store.fail_interrupted()
        self.runners = [self._runner(device) for device in self.devices]
        # Jobs at external providers (OpenAI, Runway) never wait behind GPU work: their own
        # runner, a thread of this process, with no device and nothing to warm up.
        self.runners.append(
            Runner(
                "cpu",
                self.store,
                self.handlers,
                self.events.publish,
                self._wake,
                None,
                EXTERNAL_QUEUE,
            )
        )
        for runner in self.runners:
            runner.start()
        return interrupted

    def _runner(self, device: str) -> Runner:
        args = (device, self.store, self.handlers, self.events.publish, self._wake, self.warm_up)
        if self.processes is not None:
            return ProcessRunner(*args, processes=self.processes)
        return Runner(*args)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; a running job stops at its next step and is queued again (it
        runs when the server is back). One stuck longer than ``timeout`` (a model load) is
        left to the next start, which fails it as interrupted."""
        for runner in self.runners:
            runner.stop()
            if runner.current is not None:
                self.store.interrupt(runner.current)
        for runner in self.runners:
            runner.join(timeout)

    def submit(
        self, kind: str, model: str, request: dict[str, Any], queue: str = DEVICE_QUEUE
    ) -> Job:
        """Queue a job: on the devices, or (``EXTERNAL_QUEUE``) for a provider's model."""
        self.check_callback(request)
        job = self.store.submit(kind, model, request, queue)
        with self._wake:
            self._wake.notify_all()
        self.events.publish(job.id)
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.store.cancel(job_id)
        self.events.publish(job_id)
        return job
