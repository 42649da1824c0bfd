"""HTTP for the agent: validate → submit a job (on the queue of jobs at providers: the
agent waits on an LLM, never behind GPU work) → answer with it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.agentic.schemas import SequenceJob, SequenceRequest
from api.agentic.validation import validate_request
from api.common.jobs.router import WaitSeconds, job_response, submit_job, submit_route
from api.common.jobs.store import EXTERNAL_QUEUE

router = APIRouter(tags=["agentic"])


@router.post(
    "/agentic/sequences",
    **submit_route("agentic_create", SequenceJob),
)
async def create_sequence(
    body: SequenceRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Break a story down into a scene, its protagonist and antagonist, and shots, each with
    an image prompt (for /api/images) and a video prompt (for /api/videos); reference
    images are described by the texts model for the agent. Its progress events say each
    step (``progress.status``: an LLM request, a reference described)."""
    services = request.app.state.services
    checked = await run_in_threadpool(validate_request, body, services)
    assert checked.model is not None  # filled by validate_request
    job = await submit_job(
        request, "agentic", checked.model, checked.model_dump(mode="json"), EXTERNAL_QUEUE
    )
    return await job_response(request, job, wait, response)
