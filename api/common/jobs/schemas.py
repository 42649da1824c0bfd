"""The Job as clients see it: the same for every domain, its request and result typed per
kind (``job_model``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Progress(BaseModel):
    step: int = Field(description="Steps done (denoising steps, tokens, provider polls).")
    total: int = Field(description="Steps in all, as far as known.")
    # Only what a job of its kind reports: an image job's progress is {step, total}.
    text: str | None = Field(
        None, description="Text jobs: the answer so far.", exclude_if=lambda value: value is None
    )
    status: str | None = Field(
        None,
        description="Jobs at a provider: its status and task.",
        exclude_if=lambda value: value is None,
    )


class JobError(BaseModel):
    type: str = Field(
        description="What kind of failure, for programs: e.g. out_of_memory, provider_error, "
        "model_unavailable, interrupted, internal_error.",
    )
    message: str = Field(description="What went wrong and what to do, for people.")


class Job(BaseModel):
    """A submitted piece of work: queued, then run on a device (or at a provider)."""

    id: str
    kind: str = Field(description="The domain the job belongs to: its route, e.g. images.")
    model: str
    status: JobStatus
    queue_position: int | None = Field(None, description="1 = next; null unless queued.")
    progress: Progress | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any] = Field(description="The request as validated, defaults filled.")
    result: dict[str, Any] | None = None
    error: JobError | None = None
    worker: str | None = Field(
        None,
        description='What ran it, e.g. "runner-cuda:1", or with DD_BROKER_URL the worker: '
        '"cuda:1 on gpu-02 (pid 4242)"; null while queued.',
    )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def job_model(kind: str, title: str, request: Any, result: Any) -> type[Job]:
    """The Job of one kind, as the API documents and checks it: ``kind`` fixed, ``request``
    and ``result`` of the domain's types (``title``, e.g. ``ImageJob``, names it)."""
    fixed_kind: Any = Literal[kind]  # a type built at run time: Any to the type checker
    return create_model(
        title,
        __base__=Job,
        __doc__=f"A job of kind {kind}: its request and, once it succeeded, its result.",
        kind=(fixed_kind, Field(description="The domain the job belongs to.")),
        request=(request, Field(description="The request as validated, defaults filled.")),
        result=(result | None, None),
    )
