"""A device's jobs in a process of its own, for servers with several GPUs.

One Python process can't run models on several GPUs at once in threads: torch.compile
traces a model by patching ``torch.nn.Module.__call__`` for the whole process, so a
compilation on one GPU breaks (or is fed) whatever another thread runs meanwhile. With
several GPUs, each gets a worker process (started with ``spawn``: a clean interpreter, its
own CUDA context, model cache and compile state); its runner thread in the server claims
jobs as before and hands each to that process over a pipe, relaying progress one way and
cancellation the other. A process that dies (a crash in native code, the OOM killer) fails
its job clearly and is started again for the next one.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from api.common.devices import free_memory, use_device
from api.common.errors import JobCancelled
from api.common.jobs.runner import (
    JobContext,
    JobHandler,
    Outcome,
    Runner,
    StoreJobContext,
    execute_job,
)
from api.common.jobs.schemas import Job, JobStatus
from api.common.logs import quiet_model_libraries
from api.common.media import limit_input_pixels
from api.common.services import Services
from api.common.settings import ServerSettings

log = logging.getLogger("api.jobs")

# (services) -> (job handlers by kind, warm-up for a device or None); a module-level function,
# so that the spawned process can import it by name.
JobFunctions = Callable[[Services], tuple[dict[str, JobHandler], Callable[[str], None] | None]]

# Seconds between looks at a running job's cancel request (progress arrives at once).
CANCEL_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class DeviceProcesses:
    """How to start a device's worker process, and where it reports its loaded models."""

    settings: ServerSettings
    functions: JobFunctions
    services: Services


class PipeJobContext(JobContext):
    """A job inside a device process: progress goes up the pipe, cancel requests come down."""

    def __init__(self, job_id: str, device: str, conn: Connection) -> None:
        super().__init__(job_id, device)
        self.conn = conn
        self.cancelled = False

    def progress(self, step: int, total: int, **detail: str) -> None:
        self.conn.send(("progress", step, total, detail))
        self.check_cancelled()

    def check_cancelled(self) -> None:
        while not self.cancelled and self.conn.poll():
            self.cancelled = self.conn.recv() == ("cancel",)
        if self.cancelled:
            raise JobCancelled(self.job_id)


def device_process(
    settings: ServerSettings, functions: JobFunctions, device: str, conn: Connection
) -> None:
    """The worker process of one device: warm up, then run each job the server sends."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [{device}]: %(message)s",
    )
    limit_input_pixels(settings.max_input_pixels)
    quiet_model_libraries(debug=settings.log_level == "debug")
    services = Services.from_settings(settings)
    handlers, warm_up = functions(services)
    use_device(device)
    if warm_up is not None:
        try:
            warm_up(device)
        except Exception:  # a model that can't warm up fails its jobs later, clearly
            log.exception("warm-up on %s failed", device)
    conn.send(("ready", services.loaded_models()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if message is None:
            return
        job = Job.model_validate(message)
        status, result, error = execute_job(handlers, job, PipeJobContext(job.id, device, conn))
        if status != JobStatus.succeeded:
            free_memory()
        conn.send(("done", status.value, result, error, services.loaded_models()))


class ProcessRunner(Runner):
    """A runner thread whose jobs run in the device's worker process."""

    def __init__(self, *args: Any, processes: DeviceProcesses, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.processes = processes
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None

    def prepare(self) -> None:
        self.start_process()
        self.warming = False

    def start_process(self) -> None:
        """Start the worker process and wait until it has warmed up."""
        context = multiprocessing.get_context("spawn")
        here, there = context.Pipe()
        self.process = context.Process(
            target=device_process,
            args=(self.processes.settings, self.processes.functions, self.device, there),
            name=f"device-{self.device}",
            daemon=True,
        )
        self.process.start()
        there.close()
        self.conn = here
        try:
            kind, loaded = here.recv()
        except (EOFError, OSError):
            log.error("the worker process of %s died while starting", self.device)
            return
        self.processes.services.note_loaded(self.device, loaded)
        log.info("worker process of %s ready (pid %s)", self.device, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def execute(self, job: Job, context: StoreJobContext) -> Outcome:
        if not self.alive():
            self.start_process()
        try:
            assert self.conn is not None
            self.conn.send(job.model_dump(mode="json"))
            return self.relay(job)
        except (EOFError, OSError):
            pass
        code = self.process.exitcode if self.process is not None else None
        self.processes.services.note_loaded(self.device, {})
        return (
            JobStatus.failed,
            None,
            {
                "type": "worker_died",
                "message": f"the process running {self.device}'s jobs died while running this "
                f"job (exit code {code}: a crash in native code, or killed, e.g. for memory); "
                "it has been restarted: submit the job again",
            },
        )

    def relay(self, job: Job) -> Outcome:
        """Pass the process's progress on and the job's cancel request in, until it ends."""
        assert self.conn is not None
        cancel_sent = False
        while True:
            if not cancel_sent and self.store.cancel_requested(job.id):
                self.conn.send(("cancel",))
                cancel_sent = True
            if not self.conn.poll(CANCEL_POLL_SECONDS):
                if not self.alive():
                    raise EOFError
                continue
            message = self.conn.recv()
            if message[0] == "progress":
                self.store.set_progress(job.id, message[1], message[2], message[3])
                self.publish(job.id, True)
            elif message[0] == "done":
                _, status, result, error, loaded = message
                self.processes.services.note_loaded(self.device, loaded)
                return JobStatus(status), result, error

    def finish_up(self) -> None:
        if self.process is None:
            return
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
