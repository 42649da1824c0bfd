"""HTTP for images: validate → submit a job → answer with it."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.common.errors import error_responses
from api.common.jobs.router import WaitSeconds, job_response
from api.common.jobs.schemas import Job, JobKind
from api.images.schemas import ImageRequest
from api.images.service import validate_request

router = APIRouter(tags=["images"])


@router.post(
    "/images",
    operation_id="images_create",
    status_code=202,
    response_model=Job,
    responses={
        200: {"model": Job, "description": "Finished within `wait`."},
        **error_responses(400, 403, 413, 422),
    },
)
async def create_image(
    body: ImageRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> Job:
    """Text→image, image→image or inpainting, chosen from the inputs given."""
    services = request.app.state.services
    engine = request.app.state.engine
    checked = await run_in_threadpool(validate_request, body, services)
    job = await run_in_threadpool(
        engine.submit, JobKind.images, checked.model, checked.model_dump(mode="json")
    )
    return await job_response(request, job, wait, response)
