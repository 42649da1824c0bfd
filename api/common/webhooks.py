"""Webhooks: a job whose request has a ``callback_url`` is POSTed there once it ends.

The body is the finished Job as ``GET /api/jobs/{id}`` answers it (download links signed);
the ``X-DD-Signature`` header is ``sha256=<hex HMAC-SHA256 of the body>`` with the data
dir's ``webhook-secret`` (made on first use, mode 0600), so a receiver can tell the call came
from this server. The API process sends them, whichever engine runs the jobs: it hears of
jobs ending through the engine's change notices (``JobEvents``), notes each webhook in an
outbox (a SQLite file in the data dir) and delivers from there, retrying with backoff until
a 2xx answer; a runner never waits for a receiver. Webhooks noted but not delivered survive
a restart; at start, the recent finished jobs are looked over too (a job that ended on a
Celery worker while the API was down).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from api import __version__
from api.common.errors import InvalidField, NotFound
from api.common.jobs.schemas import Job

if TYPE_CHECKING:
    from api.common.jobs.engine import BaseJobEngine

log = logging.getLogger("api.webhooks")

SECRET_FILE = "webhook-secret"
SIGNATURE_HEADER = "X-DD-Signature"
OUTBOX_FILE = "webhooks.sqlite3"

OUTBOX = """
CREATE TABLE IF NOT EXISTS webhooks (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (delivered_at, next_at);
"""


def check_callback_url(url: str | None, hosts: Iterable[str]) -> None:
    """Refuse (422 on ``callback_url``) a webhook whose host is not in DD_CALLBACK_HOSTS."""
    if url is None:
        return
    allowed = set(hosts)
    if not allowed:
        raise InvalidField(
            "webhooks are off on this server: DD_CALLBACK_HOSTS lists no host a callback_url "
            "may point at",
            "callback_url",
        )
    host = (urlsplit(url).hostname or "").lower()
    if host not in allowed:
        raise InvalidField(
            f"callback_url's host {host!r} is not one of DD_CALLBACK_HOSTS "
            f"({', '.join(sorted(allowed))})",
            "callback_url",
        )


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-DD-Signature`` header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Outbox:
    """The webhooks to deliver and delivered, one per job (a SQLite file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(OUTBOX)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, url: str) -> bool:
        """Note a webhook to deliver now; False when this job's was noted already."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO webhooks (job_id, url, next_at) VALUES (?, ?, ?)",
                (job_id, url, time.time()),
            )
            return cursor.rowcount == 1

    def due(self, max_attempts: int) -> list[tuple[str, str, int]]:
        """(job id, url, attempts so far) of the webhooks to try now."""
        with self._lock:
            return self._db.execute(
                "SELECT job_id, url, attempts FROM webhooks WHERE delivered_at IS NULL"
                " AND attempts < ? AND next_at <= ? ORDER BY next_at",
                (max_attempts, time.time()),
            ).fetchall()

    def next_due(self, max_attempts: int) -> float | None:
        """When the next undelivered webhook is due (unix time), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_at) FROM webhooks WHERE delivered_at IS NULL AND attempts < ?",
                (max_attempts,),
            ).fetchone()
        return row[0]

    def delivered(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE webhooks SET delivered_at = ?, attempts = attempts + 1, last_error = NULL"
                " WHERE job_id = ?",
                (time.time(), job_id),
            )

    def failed(self, job_id: str, error: str, retry_in: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE webhooks SET attempts = attempts + 1, last_error = ?, next_at = ?"
                " WHERE job_id = ?",
                (error, time.time() + retry_in, job_id),
            )

    def state(self, job_id: str) -> dict[str, Any] | None:
        """A job's webhook: url, attempts, delivered_at, last_error (None: none noted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT url, attempts, delivered_at, last_error FROM webhooks WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("url", "attempts", "delivered_at", "last_error"), row, strict=True))

    def forget(self, job_ids: Iterable[str]) -> None:
        """Drop the webhooks of jobs removed (retention)."""
        with self._lock:
            self._db.executemany("DELETE FROM webhooks WHERE job_id = ?", [(i,) for i in job_ids])


class WebhookSender:
    """Notes the webhook of each job that ends, and delivers the outbox's with backoff."""

    # The n-th retry waits RETRY_SECONDS * 2**(n-1), at most MAX_RETRY_SECONDS; after
    # MAX_ATTEMPTS tries the webhook is given up (logged; its last error kept in the outbox).
    RETRY_SECONDS = 2.0
    MAX_RETRY_SECONDS = 3600.0
    MAX_ATTEMPTS = 12
    TIMEOUT_SECONDS = 10.0
    # At start, the finished jobs looked over for a webhook not yet noted.
    SCAN_LIMIT = 1000

    def __init__(
        self,
        engine: BaseJobEngine,
        outbox: Outbox,
        secret: bytes,
        answer: Callable[[Job], dict[str, Any]],
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.secret = secret
        self.answer = answer  # the job as GET /api/jobs/{id} answers it (links signed)

    async def run(self) -> None:
        """Until cancelled: note the webhooks of jobs that end, deliver those due."""
        async with httpx.AsyncClient(timeout=self.TIMEOUT_SECONDS) as client:
            with self.engine.events.watch_all() as feed:
                for job in await asyncio.to_thread(
                    self.engine.store.list, None, None, self.SCAN_LIMIT
                ):
                    await self.note(job)
                while True:
                    try:
                        await self.deliver_due(client)
                        wake_in = 60.0
                        due = await asyncio.to_thread(self.outbox.next_due, self.MAX_ATTEMPTS)
                        if due is not None:
                            wake_in = min(wake_in, max(0.0, due - time.time()))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(feed.changed.wait(), wake_in)
                        for job_id, only_progress in feed.take().items():
                            if not only_progress:
                                with contextlib.suppress(NotFound):
                                    await self.note(await self.engine.get(job_id))
                    except Exception:  # the store or the broker failing: try again shortly
                        log.exception("webhooks: sending failed; trying again in 5 s")
                        await asyncio.sleep(5.0)

    async def note(self, job: Job) -> None:
        url = job.request.get("callback_url")
        if job.finished and isinstance(url, str):
            await asyncio.to_thread(self.outbox.add, job.id, url)

    async def deliver_due(self, client: httpx.AsyncClient) -> None:
        for job_id, url, attempts in await asyncio.to_thread(self.outbox.due, self.MAX_ATTEMPTS):
            try:
                job = await self.engine.get(job_id)
            except NotFound:
                await asyncio.to_thread(self.outbox.forget, [job_id])
                continue
            error = await self.post(client, url, job, attempts + 1)
            if error is None:
                await asyncio.to_thread(self.outbox.delivered, job_id)
                continue
            retry_in = min(self.RETRY_SECONDS * 2**attempts, self.MAX_RETRY_SECONDS)
            await asyncio.to_thread(self.outbox.failed, job_id, error, retry_in)
            if attempts + 1 >= self.MAX_ATTEMPTS:
                log.warning("job %s: webhook to %s given up after %d tries: %s", job_id, url,
                            attempts + 1, error)  # fmt: skip
            else:
                log.info("job %s: webhook to %s failed (%s); again in %.0fs", job_id, url,
                         error, retry_in)  # fmt: skip

    async def post(self, client: httpx.AsyncClient, url: str, job: Job, attempt: int) -> str | None:
        """POST the job to ``url``: None when answered 2xx, else what went wrong."""
        body = json.dumps(self.answer(job), default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"deferred-diffusion/{__version__}",
            SIGNATURE_HEADER: signature(self.secret, body),
            "X-DD-Job-Id": job.id,
            "X-DD-Attempt": str(attempt),
        }
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return None
        return f"answered HTTP {response.status_code}"
