"""HTTP for texts: validate → submit a job → answer with it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.common.errors import error_responses
from api.common.jobs.router import WaitSeconds, job_response
from api.texts.schemas import TextJob, TextRequest
from api.texts.validation import validate_request

router = APIRouter(tags=["texts"])


@router.post(
    "/texts",
    operation_id="texts_create",
    status_code=202,
    response_model=TextJob,
    responses={
        200: {"model": TextJob, "description": "Finished within `wait`."},
        **error_responses(400, 403, 413, 422),
    },
)
async def create_text(
    body: TextRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Chat with a vision-language model: messages with text, image and video parts; the
    answer, the conversation with it (``chain_of_thought``) and the token counts. Its
    progress events carry the answer so far (``progress.text``)."""
    services = request.app.state.services
    engine = request.app.state.engine
    checked = await run_in_threadpool(validate_request, body, services)
    job = await run_in_threadpool(
        engine.submit, "texts", checked.model, checked.model_dump(mode="json")
    )
    return await job_response(request, job, wait, response)
