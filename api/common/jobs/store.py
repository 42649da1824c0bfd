"""Jobs on disk: a SQLite file in the data dir, so a submitted job survives a restart."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.common.errors import Conflict, NotFound
from api.common.jobs.schemas import FINISHED, Job, JobStatus
from api.common.schemas import replace_invalid_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    progress TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
"""

# The queues jobs wait in: one for the compute devices, one for jobs at external providers
# (which never wait behind GPU work). In a queue, the highest priority (the request's) runs
# first, equal ones in submission order. Databases from before queues or priorities get the
# column (their jobs: priority 0).
DEVICE_QUEUE = "device"
EXTERNAL_QUEUE = "external"
ADDED_COLUMNS = {
    "queue": f"ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT '{DEVICE_QUEUE}'",
    "priority": "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
}
QUEUE_ORDER = "priority DESC, seq"
QUEUE_INDEX = f"CREATE INDEX IF NOT EXISTS jobs_queue_order ON jobs (status, queue, {QUEUE_ORDER})"

INTERRUPTED = (
    "the server stopped while this job was running (process killed or crashed); "
    "no output was written — submit it again"
)


def _loads(text: str | None) -> Any:
    """A JSON column. Text that no response could encode (a lone surrogate, kept by a job
    stored before requests were checked for it) reads as U+FFFD, never as an error."""
    return replace_invalid_text(json.loads(text)) if text else None


def _decode(data: bytes) -> str:
    """A TEXT column's bytes: UTF-8, with anything else (written by other tools) as U+FFFD."""
    return data.decode("utf-8", "replace")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobSignals:
    """What the HTTP side and the runners tell each other about running jobs: progress,
    cancel requests, and the stops of a shutdown. In memory (a denoising step must not wait
    for a disk write; progress is saved when the job ends), behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[str, dict[str, Any]] = {}
        self._cancelling: set[str] = set()
        self._interrupted: set[str] = set()  # stopped for a shutdown: to be queued again

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._lock:
            self._progress[job_id] = progress

    def progress(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._progress.get(job_id)

    def cancel(self, job_id: str, interrupt: bool = False) -> None:
        """Ask a running job to stop at its next step (``interrupt``: for a shutdown)."""
        with self._lock:
            self._cancelling.add(job_id)
            if interrupt:
                self._interrupted.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelling

    def interrupted(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._interrupted

    def finish(self, job_id: str) -> dict[str, Any] | None:
        """Forget a job that ended; its last progress."""
        with self._lock:
            self._cancelling.discard(job_id)
            self._interrupted.discard(job_id)
            return self._progress.pop(job_id, None)


class JobStore:
    """Every job the server has accepted, with its status, request, result or error."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # the database connection's
        self.signals = JobSignals()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.text_factory = _decode
        self._db.execute("PRAGMA journal_mode=WAL")
        # A submitted job is synced to disk before the client hears of it (see submit);
        # later changes (claim, finish) are only written: a process crash loses none of
        # them, a power cut at worst the last ones (the job is then failed as interrupted).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, add in ADDED_COLUMNS.items():
            if column not in columns:
                self._db.execute(add)
        self._db.execute(QUEUE_INDEX)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _job(self, row: sqlite3.Row) -> Job:
        position = None
        if row["status"] == JobStatus.queued:
            ahead = self._one(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND queue = ?"
                " AND (priority > ? OR (priority = ? AND seq < ?))",
                (row["queue"], row["priority"], row["priority"], row["seq"]),
            )
            assert ahead is not None  # COUNT(*) always returns one row
            position = ahead[0] + 1
        return Job(
            id=row["id"],
            kind=row["kind"],
            model=row["model"],
            status=row["status"],
            queue_position=position,
            progress=self.signals.progress(row["id"]) or _loads(row["progress"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            request=_loads(row["request"]),
            result=_loads(row["result"]),
            error=_loads(row["error"]),
            worker=row["worker"],
        )

    def submit(
        self, kind: str, model: str, request: dict[str, Any], queue: str = DEVICE_QUEUE
    ) -> Job:
        """Queue a job, at the priority its request asks for (0 when it says none)."""
        job_id = uuid.uuid4().hex
        priority = int(request.get("priority", 0))
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "INSERT INTO jobs (id, kind, model, status, request, created_at, queue, priority)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, kind, model, json.dumps(request), _now(), queue, priority),
            )
            self._db.execute("PRAGMA synchronous=NORMAL")
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"no job with id {job_id!r}", "id")
        return self._job(row)

    def list(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[Job]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [self._job(row) for row in rows]

    def claim_next(self, worker: str, queue: str = DEVICE_QUEUE) -> Job | None:
        """Atomically move the next job queued in ``queue`` (the highest priority, the
        oldest of those) to running and return it."""
        row = self._one(
            "UPDATE jobs SET status = 'running', started_at = ?, worker = ?"
            " WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' AND queue = ?"
            f" ORDER BY {QUEUE_ORDER} LIMIT 1) RETURNING *",
            (_now(), worker, queue),
        )
        return self._job(row) if row else None

    def set_progress(
        self, job_id: str, step: int, total: int, detail: dict[str, str] | None = None
    ) -> None:
        self.signals.set_progress(job_id, {"step": step, "total": total} | (detail or {}))

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        progress = self.signals.finish(job_id)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, progress = ?, finished_at = ?"
                " WHERE id = ? AND status = 'running'",
                (
                    status,
                    json.dumps(result) if result is not None else None,
                    json.dumps(error) if error is not None else None,
                    json.dumps(progress) if progress is not None else None,
                    _now(),
                    job_id,
                ),
            )

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now; ask a running one to stop at its next step."""
        with self._lock:
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job with id {job_id!r}", "id")
            if row["status"] in FINISHED:
                raise Conflict(f"job {job_id} already {row['status']}; nothing to cancel", "id")
            if row["status"] == JobStatus.queued:
                self._db.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?",
                    (_now(), job_id),
                )
            else:
                self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                self.signals.cancel(job_id)
        return self.get(job_id)

    def interrupt(self, job_id: str) -> None:
        """Stop a running job at its next step because the server is shutting down."""
        self.signals.cancel(job_id, interrupt=True)

    def requeue_if_interrupted(self, job_id: str) -> bool:
        """Put a job stopped by ``interrupt`` back in the queue, in its old place."""
        if not self.signals.interrupted(job_id):
            return False
        self.signals.finish(job_id)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, worker = NULL,"
                " progress = NULL WHERE id = ? AND status = 'running'",
                (job_id,),
            )
        return True

    def cancel_requested(self, job_id: str) -> bool:
        return self.signals.cancel_requested(job_id)

    def fail_interrupted(self) -> int:
        """Mark jobs left ``running`` by a process that died as failed; returns how many."""
        error = json.dumps({"type": "interrupted", "message": INTERRUPTED})
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?"
                " WHERE status = 'running'",
                (error, _now()),
            )
            return cursor.rowcount

    def remove_finished(self, before: datetime) -> builtins.list[Job]:
        """Delete the jobs that ended before ``before`` (retention); returns them."""
        with self._lock:
            rows = self._db.execute(
                "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
                " AND finished_at < ? RETURNING *",
                (before.astimezone(UTC).isoformat(timespec="milliseconds"),),
            ).fetchall()
        return [self._job(row) for row in rows]

    def queue_positions(self) -> dict[str, int]:
        """The position of each queued job in its queue (1 = next), by id."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, queue FROM jobs WHERE status = 'queued' ORDER BY {QUEUE_ORDER}"
            ).fetchall()
        positions: dict[str, int] = {}
        ahead: dict[str, int] = defaultdict(int)
        for row in rows:
            ahead[row["queue"]] += 1
            positions[row["id"]] = ahead[row["queue"]]
        return positions

    def queue_depth(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM jobs"
                " WHERE status IN ('queued', 'running') GROUP BY status"
            ).fetchall()
        counts = {"queued": 0, "running": 0}
        counts.update({row[0]: row[1] for row in rows})
        return counts
