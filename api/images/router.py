"""HTTP for images: validate → submit a job → answer with it; re-run an output; list the
LoRAs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import Field, PlainValidator
from starlette.concurrency import run_in_threadpool

from api.common.domain import Submission
from api.common.errors import InvalidField
from api.common.jobs.router import WaitSeconds, job_response, submit_job, submit_route
from api.common.jobs.store import DEVICE_QUEUE, EXTERNAL_QUEUE
from api.common.media import decode_data_url, read_metadata
from api.common.rerun import Overrides, check_again, submit_again
from api.common.schemas import InputPath
from api.common.services import Services
from api.images.registry import IMAGE_MODELS
from api.images.schemas import REQUEST_TYPES, AnyImageRequest, ImageJob, LoraInfo
from api.images.service import list_loras
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


def submission(checked: AnyImageRequest) -> Submission:
    """A checked request as the job engine queues it (a provider's model: its own queue)."""
    queue = EXTERNAL_QUEUE if IMAGE_MODELS[checked.model].external else DEVICE_QUEUE
    return Submission(checked.model, checked.model_dump(mode="json"), queue)


def check_request(services: Services, body: dict[str, Any]) -> Submission:
    """A request body checked exactly as POST /api/images checks one (re-runs)."""
    return submission(validate_request(parse_request(body), services))


@router.post(
    "/images",
    **submit_route("images_create", ImageJob),
)
async def create_image(
    body: ImageBody, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """Text→image, image→image or inpainting (chosen from the inputs given) with a generative
    model (ImageRequest); upscaling, depth or segmentation with a task model (UpscaleRequest,
    DepthRequest, SegmentationRequest). `model` says which request the body is."""
    services = request.app.state.services
    checked = await run_in_threadpool(validate_request, body, services)
    return await submit(request, response, submission(checked), wait)


@router.get("/loras", operation_id="loras_list", response_model=list[LoraInfo])
async def get_loras(request: Request) -> list[LoraInfo]:
    """The LoRAs in DD_LORAS_DIR that a request's `loras` may name: the model family each
    is for (read from its keys) and the models that take it."""
    return await run_in_threadpool(list_loras, request.app.state.services)


class ImageRerun(Overrides):
    """An output this server wrote, to make again from the request it carries."""

    image_path: InputPath = Field(
        description="A PNG, EXR, TIFF, JPEG or WebP this server wrote (its metadata holds "
        "the request that made it): a path on shared storage, a path from POST /api/files, or "
        "a data: URL."
    )


@router.post(
    "/images/rerun",
    **submit_route("images_rerun", ImageJob),
)
async def rerun_image(
    body: ImageRerun, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    """The request recorded in an output image (an image of a batch: that image alone, with
    its own seed), with `overrides`, as a new job: same machine and weights → same pixels.
    It writes where the original was written (a new take beside it) unless `overrides` give
    another output_image_path (null: the data dir)."""
    services = request.app.state.services
    recorded = await run_in_threadpool(recorded_request, services, body.image_path)
    checked = await run_in_threadpool(
        check_again, check_request, services, recorded, body.overrides
    )
    job = await submit_again(request, "images", checked, body.overrides)
    return await job_response(request, job, wait, response)


def recorded_request(services: Services, image_path: str) -> dict[str, Any]:
    """The request an output carries in its metadata, from its path (inside the allowed
    roots, or the upload folder) or a data URL."""
    field = "image_path"
    source: Path | bytes
    if image_path.startswith("data:"):
        source, _ = decode_data_url(image_path, field)
    else:
        source = services.paths.resolve_input_path(image_path, field)
    metadata = read_metadata(source, field)
    if metadata.get("metadata_shortened"):
        raise InvalidField(
            f"{field}: its metadata was shortened to fit a JPEG's EXIF (64 KiB), so its "
            f"request is not whole; re-run its job instead (POST /api/jobs/"
            f"{metadata.get('job_id')}/rerun)",
            field,
        )
    recorded = metadata.get("request")
    if not isinstance(recorded, dict):
        raise InvalidField(
            f"{field}: its metadata holds no request (written before re-runs were recorded); "
            "re-run its job instead (POST /api/jobs/{id}/rerun)",
            field,
        )
    return recorded


async def submit(
    request: Request, response: Response, checked: Submission, wait: float
) -> dict[str, Any]:
    job = await submit_job(request, "images", checked.model, checked.request, checked.queue)
    return await job_response(request, job, wait, response)
