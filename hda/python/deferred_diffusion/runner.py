"""Running a node's jobs off the UI thread: submit, follow, cancel, and hand the results
back to the UI thread. Used by the Houdini and Nuke glue; knows neither."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from deferred_diffusion.client import Client, DeferredDiffusionError, Job, Progress

Request = tuple[str, dict[str, Any]]  # (kind, request)
# Given the jobs done so far, the next requests (e.g. a shot's video after its image).
FollowUp = Callable[[list[Job]], list[Request]]


class Run:
    """One press of Update: its requests submitted together, followed in order, then the
    follow-up's, until none is left. ``ui`` runs a function on the UI thread."""

    def __init__(
        self,
        client: Client,
        requests: list[Request],
        ui: Callable[[Callable[[], None]], None],
        on_progress: Callable[[Progress, int, int], None],
        on_done: Callable[[list[Job]], None],
        on_error: Callable[[DeferredDiffusionError], None],
        follow_up: FollowUp | None = None,
        on_submitted: Callable[[Job], None] | None = None,
    ) -> None:
        self.client = client
        self.requests = requests
        self.ui = ui
        self.on_progress = on_progress
        self.on_done = on_done
        self.on_error = on_error
        self.follow_up = follow_up
        self.on_submitted = on_submitted
        self.job_ids: list[str] = []
        self.cancelled = threading.Event()
        self.lock = threading.Lock()

    def start(self, in_thread: bool = True) -> None:
        """In a thread of its own (the UI stays free), or here (hython, the farm)."""
        if in_thread:
            threading.Thread(target=self.work, name="deferred-diffusion", daemon=True).start()
        else:
            self.work()

    def work(self) -> None:
        done: list[Job] = []
        try:
            requests = self.requests
            while requests:
                done += self._run_batch(requests, len(done))
                requests = self.follow_up(done) if self.follow_up else []
                self.follow_up = None
            self.ui(lambda: self.on_done(done))
        except DeferredDiffusionError as error:
            failure = error
            self.ui(lambda: self.on_error(failure))
        except Exception as error:  # a bug here must still reach the artist
            unexpected = DeferredDiffusionError(f"{type(error).__name__}: {error}", "client_error")
            self.ui(lambda: self.on_error(unexpected))

    def _run_batch(self, requests: list[Request], offset: int) -> list[Job]:
        submitted = []
        for kind, request in requests:
            if self.cancelled.is_set():
                raise DeferredDiffusionError("cancelled before it was submitted", "cancelled")
            job = self.client.submit(kind, request)
            with self.lock:
                self.job_ids.append(job["id"])
            submitted.append(job)
            if self.on_submitted is not None:
                self.ui(functools.partial(self.on_submitted, job))
        total = offset + len(submitted)
        finished = []
        for index, job in enumerate(submitted):

            def progress(update: Progress, number: int = offset + index + 1) -> None:
                self.ui(lambda: self.on_progress(update, number, total))

            job = self.client.wait(job["id"], on_progress=progress)
            if job["status"] != "succeeded":
                self.cancel()  # the others of the batch are no use without it
                raise DeferredDiffusionError.from_job(job)
            finished.append(job)
        return finished

    def cancel(self) -> None:
        """Cancel every job of the run that has not finished (from any thread)."""
        self.cancelled.set()
        with self.lock:
            ids = list(self.job_ids)
        for job_id in ids:
            try:
                self.client.cancel(job_id)
            except DeferredDiffusionError as error:
                if error.status != 409:  # 409: it had finished already
                    raise
