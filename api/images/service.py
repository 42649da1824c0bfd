"""The images domain's public functions: check a request at submit, run it as a job."""

from __future__ import annotations

import functools
import importlib
import time
from pathlib import Path
from typing import Any

from api import __version__
from api.common.files import write_output
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job
from api.common.media import encode_image
from api.common.models import find_weights, require_weights
from api.common.services import Services
from api.images.context import ImageContext, Picture, Runtime, build_context, validate_request
from api.images.registry import DIFFUSION_FAMILIES, IMAGE_MODELS
from api.images.schemas import ImageOutput, ImageRequest, ImageResult

__all__ = ["describe_models", "run_image_job", "validate_request"]

# Family → module under api/images/models/ with ``generate(ctx, runtime)``.
FAMILY_MODULES = dict.fromkeys(DIFFUSION_FAMILIES, "diffusion")


def describe_models(services: Services) -> list[dict[str, Any]]:
    """The image models for GET /api/models: capabilities, defaults, weights, state."""
    loaded = services.loaded_models()
    described = []
    for model in IMAGE_MODELS.values():
        weights = None
        if not model.external:
            weights = find_weights(
                model.name, model.repo, services.models_dir, services.settings.allow_downloads
            )
        described.append(
            {
                "name": model.name,
                "domain": "images",
                "family": model.family,
                "modes": sorted(model.modes),
                "external": model.external,
                "defaults": {
                    "width": model.width,
                    "height": model.height,
                    "num_inference_steps": model.steps,
                    "guidance_scale": model.guidance_scale,
                },
                "weights": {
                    "repo": model.repo,
                    "source": weights.source if weights else None,
                    "present": model.external or bool(weights and weights.source != "download"),
                    "tiny": bool(weights and weights.tiny),
                },
                "loaded_on": loaded.get(model.name, []),
            }
        )
    return described


def run_image_job(services: Services, job: Job, context: JobContext) -> dict[str, Any]:
    """Run the model a job asks for and write its outputs where the request says."""
    request = ImageRequest.model_validate(job.request)
    image_context = build_context(request, services)
    module = importlib.import_module(
        f"api.images.models.{FAMILY_MODULES[image_context.model.family]}"
    )  # torch, diffusers and transformers load with the first job
    runtime = Runtime(
        device=context.device,
        cache=services.model_cache(context.device),
        progress=context.progress,
        find=functools.partial(
            _require_weights, services.models_dir, services.settings.allow_downloads
        ),
    )
    pictures, timings = module.generate(image_context, runtime)
    context.check_cancelled()  # cancelled during the last step: write nothing

    started = time.perf_counter()
    outputs = write_pictures(services, job, image_context, pictures, runtime.tiny)
    timings["write_s"] = time.perf_counter() - started
    result = ImageResult(
        images=outputs,
        seed=image_context.seed,
        mode=image_context.mode,
        tiny_weights=runtime.tiny,
        timings={name: round(value, 4) for name, value in timings.items()},
    )
    return result.model_dump(mode="json", exclude_none=False)


def _require_weights(models_dir: Path, allow_downloads: bool, name: str, repo: str):
    return require_weights(name, repo, models_dir, allow_downloads)


def write_pictures(
    services: Services, job: Job, ctx: ImageContext, pictures: list[Picture], tiny: bool
) -> list[ImageOutput]:
    """Write each picture (atomically, with its take when the client named the path)."""
    base = ctx.output_path
    keep_take = base is not None
    if base is None:
        base = services.data_dir / "outputs" / job.id / f"{ctx.model.name}_{ctx.seed}.png"
    metadata = ctx.metadata(tiny) | {
        "job_id": job.id,
        "software": f"deferred-diffusion {__version__}",
    }
    to_client = services.paths.to_client
    outputs = []
    for picture in pictures:
        path = base.with_name(f"{base.stem}_{picture.name}{base.suffix}") if picture.name else base
        extra = {"label": picture.label, "score": picture.score} if picture.name else {}
        take = write_output(
            path, encode_image(picture.image, path.suffix, metadata | extra), keep_take
        )
        outputs.append(
            ImageOutput(
                path=to_client(path),
                url=f"/api/files/{job.id}/{path.name}",
                width=picture.image.width,
                height=picture.image.height,
                take_path=to_client(take) if take else None,
                label=picture.label,
                score=picture.score,
            )
        )
    return outputs
