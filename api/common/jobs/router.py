"""HTTP for jobs: look up, list, follow (SSE) and cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.common.errors import error_responses
from api.common.jobs.engine import JobEngine
from api.common.jobs.schemas import Job, JobKind, JobStatus
from api.common.signing import LinkSigner

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_WAIT_SECONDS = 600

WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Hold the call until the job ends or this many "
        "seconds pass: 200 with the finished job, or 202 with the job as it stands.",
    ),
]


def engine_of(request: Request) -> JobEngine:
    return request.app.state.engine


def signed(request: Request, job: Job) -> Job:
    """The job as answered: the download links in its result signed afresh."""
    if job.result is None:
        return job
    links: LinkSigner = request.app.state.links
    return job.model_copy(update={"result": links.sign_links(job.result)})


async def job_response(request: Request, job: Job, wait: float, response: Response) -> Job:
    """The submit/wait answer: 200 once finished, 202 while queued or running."""
    if wait > 0 and not job.finished:
        job = await engine_of(request).wait(job.id, wait)
    response.status_code = 200 if job.finished else 202
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return signed(request, job)


@router.get("", operation_id="jobs_list", response_model=list[Job], responses=error_responses(422))
def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[Job]:
    """Recent jobs, newest first."""
    jobs = engine_of(request).store.list(status=status, kind=kind, limit=limit)
    return [signed(request, job) for job in jobs]


@router.get(
    "/{job_id}",
    operation_id="jobs_get",
    response_model=Job,
    responses={
        202: {"model": Job, "description": "Still queued or running after `wait`."},
        **error_responses(404, 422),
    },
)
async def get_job(request: Request, job_id: str, response: Response, wait: WaitSeconds = 0) -> Job:
    """One job; with ``wait``, held until it ends or the time passes."""
    job = await engine_of(request).get(job_id)
    if wait > 0:
        return await job_response(request, job, wait, response)
    return signed(request, job)


@router.get(
    "/{job_id}/events",
    operation_id="jobs_events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404)},
)
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    """Server-Sent Events: ``status``, ``progress`` (step/total), then ``result`` or ``error``."""
    engine = engine_of(request)
    await engine.get(job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        async for event, data in engine.follow(job_id):
            if event == "keepalive":
                yield ": keepalive\n\n"  # a comment: clients ignore it, proxies see traffic
            else:
                if event == "result":
                    data = request.app.state.links.sign_links(data)
                yield f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


@router.delete(
    "/{job_id}", operation_id="jobs_cancel", response_model=Job, responses=error_responses(404, 409)
)
def cancel_job(request: Request, job_id: str) -> Job:
    """Cancel: a queued job never runs; a running one stops at its next step. 409 if finished."""
    return signed(request, engine_of(request).cancel(job_id))
