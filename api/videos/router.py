"""HTTP for videos: validate → submit a job → answer with it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.common.domain import Submission
from api.common.jobs.router import WaitSeconds, job_response, submit_job, submit_route
from api.common.jobs.store import DEVICE_QUEUE, EXTERNAL_QUEUE
from api.common.services import Services
from api.videos.context import find_model
from api.videos.schemas import VideoJob, VideoRequest
from api.videos.validation import validate_request

router = APIRouter(tags=["videos"])


@router.post(
    "/videos",
    **submit_route("videos_create", VideoJob),
)
async def create_video(
    body: VideoRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Image→video (with input_image_path) or text→video (without, where the model can):
    an H.264 mp4, and optionally a PNG per frame."""
    services = request.app.state.services
    checked = submission(await run_in_threadpool(validate_request, body, services))
    job = await submit_job(request, "videos", checked.model, checked.request, checked.queue)
    return await job_response(request, job, wait, response)


def submission(checked: VideoRequest) -> Submission:
    """A checked request as the job engine queues it (a provider's model: its own queue)."""
    queue = EXTERNAL_QUEUE if find_model(checked.model).external else DEVICE_QUEUE
    return Submission(checked.model, checked.model_dump(mode="json"), queue)


def check_request(services: Services, body: dict[str, Any]) -> Submission:
    """A request body checked exactly as POST /api/videos checks one (re-runs)."""
    return submission(validate_request(VideoRequest.model_validate(body), services))
