"""The Job as clients see it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobKind(StrEnum):
    images = "images"


class Progress(BaseModel):
    step: int
    total: int


class JobError(BaseModel):
    type: str
    message: str


class Job(BaseModel):
    id: str
    kind: JobKind
    model: str
    status: JobStatus
    queue_position: int | None = None
    progress: Progress | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any]
    result: dict[str, Any] | None = None
    error: JobError | None = None
    worker: str | None = None  # what ran it, e.g. "runner-cuda:1"; null while queued

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
