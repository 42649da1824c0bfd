"""HTTP for jobs of every kind: look up, list, follow (SSE) and cancel.

(No ``from __future__ import annotations`` here: the routes are made inside
``jobs_router`` and FastAPI reads their annotations, which name its local types.)
"""

import json
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal, Union, get_args

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from api.common.errors import Forbidden, error_responses
from api.common.jobs.engine import JobEngine
from api.common.jobs.schemas import Job, JobStatus
from api.common.jobs.store import DEVICE_QUEUE
from api.common.signing import LinkSigner

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


def signed(request: Request, job: Job) -> dict[str, Any]:
    """The job as answered (its route's response model then types it): the download links
    in its result signed afresh."""
    answer = job.model_dump()
    if job.result is not None:
        links: LinkSigner = request.app.state.links
        answer["result"] = links.sign_links(job.result)
    return answer


def check_priority(request: Request, body: dict[str, Any]) -> None:
    """Refuse (403 on ``priority``) a job asking for more than its API key allows."""
    key = getattr(request.state, "api_key", None)
    priority = body.get("priority", 0)
    if key is not None and key.max_priority is not None and priority > key.max_priority:
        raise Forbidden(
            f"priority {priority} is more than this API key may ask for (its max_priority is "
            f"{key.max_priority}); ask for {key.max_priority} or less",
            "priority",
        )


async def submit_job(
    request: Request, kind: str, model: str, body: dict[str, Any], queue: str = DEVICE_QUEUE
) -> Job:
    """Queue a checked request (``body``, as validated) as a job of ``kind``, within the
    priority its API key allows."""
    check_priority(request, body)
    return await run_in_threadpool(engine_of(request).submit, kind, model, body, queue)


async def job_response(
    request: Request, job: Job, wait: float, response: Response
) -> dict[str, Any]:
    """The submit/wait answer: 200 once finished, 202 while queued or running."""
    if wait > 0 and not job.finished:
        job = await engine_of(request).wait(job.id, wait)
    response.status_code = 200 if job.finished else 202
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return signed(request, job)


def submit_route(operation_id: str, job_type: Any, *statuses: int) -> dict[str, Any]:
    """The settings of a route that queues a job (``POST`` with ``wait=``): 202 with the
    job, 200 when it finished within ``wait``, and the error statuses it documents (400,
    403, 413 and 422 for every submit, plus ``statuses``)."""
    return {
        "operation_id": operation_id,
        "status_code": 202,
        "response_model": job_type,
        "responses": {
            200: {"model": job_type, "description": "Finished within `wait`."},
            **error_responses(*sorted({400, 403, 413, 422, *statuses})),
        },
    }


def one_of(types: Sequence[type[Job]]) -> Any:
    """The response type of a route answering jobs of any of these kinds."""
    if len(types) == 1:
        return types[0]
    return Annotated[Union[tuple(types)], Field(discriminator="kind")]  # noqa: UP007


def jobs_router(job_types: Sequence[type[Job]]) -> APIRouter:
    """The /jobs routes, answering the registered domains' typed jobs."""
    router = APIRouter(prefix="/jobs", tags=["jobs"])
    any_job = one_of(job_types)
    kinds = tuple(get_args(job.model_fields["kind"].annotation)[0] for job in job_types)
    Kind = Literal[kinds]  # type: ignore[valid-type]

    @router.get(
        "",
        operation_id="jobs_list",
        response_model=list[any_job],  # type: ignore[valid-type]
        responses=error_responses(422),
    )
    def list_jobs(
        request: Request,
        status: JobStatus | None = None,
        kind: Kind | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        """Recent jobs, newest first."""
        jobs = engine_of(request).store.list(status=status, kind=kind, limit=limit)
        return [signed(request, job) for job in jobs]

    @router.get(
        "/events",
        operation_id="jobs_list_events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **error_responses(422)},
    )
    async def list_events(
        request: Request,
        status: JobStatus | None = None,
        kind: Kind | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> StreamingResponse:
        """Server-Sent Events of the job list: ``jobs`` (the recent jobs, as ``GET
        /api/jobs`` lists them), then ``job`` (any job submitted or changed, whatever its
        status and kind), ``progress`` (``{id, progress}``) and ``queue`` (each queued
        job's position, by id) as they happen. It does not end by itself."""
        engine = engine_of(request)

        async def stream() -> AsyncIterator[str]:
            async for event, data in engine.follow_all(status, kind, limit):
                if event == "keepalive":
                    yield ": keepalive\n\n"
                    continue
                if event == "jobs":
                    data = [signed(request, job) for job in data]
                elif event == "job":
                    data = signed(request, data)
                yield f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @router.get(
        "/{job_id}",
        operation_id="jobs_get",
        response_model=any_job,
        responses={
            202: {"model": any_job, "description": "Still queued or running after `wait`."},
            **error_responses(404, 422),
        },
    )
    async def get_job(
        request: Request, job_id: str, response: Response, wait: WaitSeconds = 0
    ) -> dict[str, Any]:
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
        """Server-Sent Events: ``status``, ``progress`` (step/total), then ``result`` or
        ``error``."""
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
        "/{job_id}",
        operation_id="jobs_cancel",
        response_model=any_job,
        responses=error_responses(404, 409),
    )
    def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        """Cancel: a queued job never runs; a running one stops at its next step. 409 if
        finished."""
        return signed(request, engine_of(request).cancel(job_id))

    return router
