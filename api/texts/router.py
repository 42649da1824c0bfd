"""HTTP for texts: validate → submit a job → answer with it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.common.jobs.router import WaitSeconds, job_response, submit_job, submit_route
from api.texts.schemas import TextJob, TextRequest
from api.texts.validation import validate_request

router = APIRouter(tags=["texts"])


@router.post(
    "/texts",
    **submit_route("texts_create", TextJob),
)
async def create_text(
    body: TextRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Chat with a vision-language model: messages with text, image and video parts; the
    answer, the conversation with it (``chain_of_thought``) and the token counts. Its
    progress events carry the answer so far (``progress.text``)."""
    services = request.app.state.services
    checked = await run_in_threadpool(validate_request, body, services)
    job = await submit_job(request, "texts", checked.model, checked.model_dump(mode="json"))
    return await job_response(request, job, wait, response)
