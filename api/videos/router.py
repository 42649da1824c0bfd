"""HTTP for videos: validate → submit a job → answer with it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.common.errors import error_responses
from api.common.jobs.router import WaitSeconds, job_response
from api.common.jobs.store import DEVICE_QUEUE, EXTERNAL_QUEUE
from api.videos.context import find_model
from api.videos.schemas import VideoJob, VideoRequest
from api.videos.validation import validate_request

router = APIRouter(tags=["videos"])


@router.post(
    "/videos",
    operation_id="videos_create",
    status_code=202,
    response_model=VideoJob,
    responses={
        200: {"model": VideoJob, "description": "Finished within `wait`."},
        **error_responses(400, 403, 413, 422),
    },
)
async def create_video(
    body: VideoRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Image→video (with input_image_path) or text→video (without, where the model can):
    an H.264 mp4, and optionally a PNG per frame."""
    services = request.app.state.services
    engine = request.app.state.engine
    checked = await run_in_threadpool(validate_request, body, services)
    queue = EXTERNAL_QUEUE if find_model(checked.model).external else DEVICE_QUEUE
    job = await run_in_threadpool(
        engine.submit, "videos", checked.model, checked.model_dump(mode="json"), queue
    )
    return await job_response(request, job, wait, response)
