"""HTTP for images: validate → submit a job → answer with it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import Field, PlainValidator
from starlette.concurrency import run_in_threadpool

from api.common.errors import error_responses
from api.common.jobs.router import WaitSeconds, job_response
from api.common.jobs.store import DEVICE_QUEUE, EXTERNAL_QUEUE
from api.images.registry import IMAGE_MODELS
from api.images.schemas import REQUEST_TYPES, AnyImageRequest, ImageJob
from api.images.validation import parse_request, validate_request

router = APIRouter(tags=["images"])

ImageBody = Annotated[
    AnyImageRequest,
    PlainValidator(parse_request, json_schema_input_type=AnyImageRequest),
    Field(
        title="ImageJobRequest",
        description="The request of the model that `model` names: ImageRequest for a "
        "generative model, UpscaleRequest for sd-x4-upscaler, DepthRequest for "
        "depth-anything, SegmentationRequest for segment-anything. A field of another "
        "request is refused (422) naming it and listing the model's fields.",
        # Which request each model takes, for clients that build forms from the spec (an
        # extension: a discriminator would make fuzzers draw a model per request type).
        json_schema_extra={
            "x-request-by-model": {
                name: f"#/components/schemas/{REQUEST_TYPES[model.task].__name__}"
                for name, model in IMAGE_MODELS.items()
            }
        },
    ),
]


@router.post(
    "/images",
    operation_id="images_create",
    status_code=202,
    response_model=ImageJob,
    responses={
        200: {"model": ImageJob, "description": "Finished within `wait`."},
        **error_responses(400, 403, 413, 422),
    },
)
async def create_image(
    body: ImageBody, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Text→image, image→image or inpainting (chosen from the inputs given) with a generative
    model (ImageRequest); upscaling, depth or segmentation with a task model (UpscaleRequest,
    DepthRequest, SegmentationRequest). `model` says which request the body is."""
    services = request.app.state.services
    engine = request.app.state.engine
    checked = await run_in_threadpool(validate_request, body, services)
    queue = EXTERNAL_QUEUE if IMAGE_MODELS[checked.model].external else DEVICE_QUEUE
    job = await run_in_threadpool(
        engine.submit, "images", checked.model, checked.model_dump(mode="json"), queue
    )
    return await job_response(request, job, wait, response)
