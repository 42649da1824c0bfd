"""The images domain's public functions: check a request at submit, run it as a job."""

from __future__ import annotations

import time
from typing import Any

from api import __version__
from api.common.files import write_output
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job
from api.common.media import encode_image
from api.common.models import find_weights, require_weights
from api.common.services import Services
from api.images.context import build_context, validate_request
from api.images.registry import IMAGE_MODELS
from api.images.schemas import ImageOutput, ImageRequest, ImageResult

__all__ = ["describe_models", "run_image_job", "validate_request"]


def describe_models(services: Services) -> list[dict[str, Any]]:
    """The image models for GET /api/models: capabilities, defaults, weights, state."""
    loaded = services.loaded_models()
    described = []
    for model in IMAGE_MODELS.values():
        weights = find_weights(
            model.name, model.repo, services.models_dir, services.settings.allow_downloads
        )
        described.append(
            {
                "name": model.name,
                "domain": "images",
                "family": model.family,
                "modes": sorted(model.modes),
                "defaults": {
                    "width": model.width,
                    "height": model.height,
                    "num_inference_steps": model.steps,
                    "guidance_scale": model.guidance_scale,
                },
                "weights": {
                    "repo": model.repo,
                    "source": weights.source if weights else None,
                    "present": bool(weights and weights.source != "download"),
                    "tiny": bool(weights and weights.tiny),
                },
                "loaded_on": loaded.get(model.name, []),
            }
        )
    return described


def run_image_job(services: Services, job: Job, context: JobContext) -> dict[str, Any]:
    """Generate the image a job asks for and write it where the request says."""
    from api.images.models import diffusion  # torch and diffusers load with the first job

    request = ImageRequest.model_validate(job.request)
    image_context = build_context(request, services)
    model = image_context.model
    weights = require_weights(
        model.name, model.repo, services.models_dir, services.settings.allow_downloads
    )
    image, timings = diffusion.generate(
        image_context,
        weights,
        context.device,
        services.model_cache(context.device),
        context.progress,
    )
    context.check_cancelled()  # cancelled during the last step: write nothing

    started = time.perf_counter()
    path = image_context.output_path
    keep_take = path is not None
    if path is None:
        path = services.data_dir / "outputs" / job.id / f"{model.name}_{image_context.seed}.png"
    metadata = image_context.metadata(weights.tiny) | {
        "job_id": job.id,
        "software": f"deferred-diffusion {__version__}",
    }
    take = write_output(path, encode_image(image, path.suffix, metadata), keep_take)
    timings["write_s"] = time.perf_counter() - started

    to_client = services.paths.to_client
    output = ImageOutput(
        path=to_client(path),
        url=f"/api/files/{job.id}/{path.name}",
        width=image.width,
        height=image.height,
        take_path=to_client(take) if take else None,
    )
    result = ImageResult(
        images=[output],
        seed=image_context.seed,
        mode=image_context.mode,
        tiny_weights=weights.tiny,
        timings={name: round(value, 4) for name, value in timings.items()},
    )
    return result.model_dump(mode="json")
