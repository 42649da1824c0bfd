"""Retention (DD_RETENTION_DAYS): finished jobs, and the outputs the server wrote under its
data dir, removed that many days after they ended; and how much the data dir holds.

Only files inside the data dir are ever removed, and of those only a job's own: an output
the server named (``<data dir>/outputs/<job id>/...``) or the timestamped take of one the
client named; the file at a client's path goes only while it is still that take (a later
job may have written there since). Files on the allowed roots outside the data dir stay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from api.common.domain import Domain
from api.common.jobs.engine import BaseJobEngine
from api.common.jobs.schemas import Job
from api.common.services import Services

log = logging.getLogger("api.retention")

# How often the background sweep runs.
SWEEP_SECONDS = 3600.0


@dataclass
class Sweep:
    """What one sweep removed."""

    jobs: list[str]
    files: int


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def job_files(job: Job, services: Services, domains: Mapping[str, Domain]) -> list[Path]:
    """The files of ``job`` that retention may remove: its own, inside the data dir."""
    domain = domains.get(job.kind)
    if domain is None or not job.result:
        return []
    data_dir = services.data_dir
    files: list[Path] = []
    for output in domain.output_files(job.result):
        path = Path(os.path.abspath(services.paths.to_server(output.path)))
        take = (
            Path(os.path.abspath(services.paths.to_server(output.take_path)))
            if output.take_path
            else None
        )
        if take is not None and _inside(take, data_dir):
            # The client's path is this job's output while it is the same file as the take.
            try:
                if _inside(path, data_dir) and os.path.samefile(path, take):
                    files.append(path)
            except OSError:
                pass
            files.append(take)
        elif take is None and _inside(path, data_dir):
            files.append(path)
    return files


def remove_files(files: list[Path], data_dir: Path) -> int:
    """Remove ``files`` (links themselves, never what they point at), then the folders left
    empty between them and the data dir's own folders; returns how many files went."""
    removed = 0
    for path in files:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("retention: can't remove %s: %s", path, exc)
            continue
        folder = path.parent
        while folder.parent != data_dir and _inside(folder, data_dir) and folder != data_dir:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    return removed


def sweep(
    engine: BaseJobEngine, services: Services, domains: Mapping[str, Domain], days: float
) -> Sweep:
    """Remove the jobs that ended more than ``days`` ago, with their data-dir outputs."""
    before = datetime.now(UTC) - timedelta(days=days)
    jobs = engine.store.remove_finished(before)
    files = [path for job in jobs for path in job_files(job, services, domains)]
    return Sweep([job.id for job in jobs], remove_files(files, services.data_dir))


async def run_retention(
    engine: BaseJobEngine,
    services: Services,
    domains: Mapping[str, Domain],
    days: float,
    forget: Callable[[list[str]], None] | None = None,
) -> None:
    """Until cancelled: sweep now, then every SWEEP_SECONDS; ``forget`` is told the ids of
    the jobs removed (the webhook outbox drops theirs)."""
    while True:
        try:
            done = await asyncio.to_thread(sweep, engine, services, domains, days)
        except Exception:
            log.exception("retention: the sweep failed; trying again later")
        else:
            if done.jobs:
                log.info(
                    "retention: removed %d job(s) older than %g days and %d file(s)",
                    len(done.jobs),
                    days,
                    done.files,
                )
            if forget is not None and done.jobs:
                await asyncio.to_thread(forget, done.jobs)
        await asyncio.sleep(SWEEP_SECONDS)


class DataDirUsage(BaseModel):
    """How much the data dir holds (jobs, outputs, uploads, compile cache, models kept
    there)."""

    bytes: int = Field(description="Bytes of the regular files in it (links not followed).")
    files: int = Field(description="How many regular files.")


class UsageMeter:
    """The data dir's size, walked at most once per ``max_age`` seconds (``/health``)."""

    def __init__(self, folder: Path, max_age: float = 30.0) -> None:
        self.folder = folder
        self.max_age = max_age
        self._last: tuple[float, DataDirUsage] | None = None

    def usage(self) -> DataDirUsage:
        if self._last is not None and time.monotonic() - self._last[0] < self.max_age:
            return self._last[1]
        size = count = 0
        stack = [self.folder]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                        count += 1
                except OSError:
                    continue
        usage = DataDirUsage(bytes=size, files=count)
        self._last = (time.monotonic(), usage)
        return usage
