"""The images domain's public functions: describe its models, run a job, name its files.
(Submit-time checks: ``api.images.validation``.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from api import __version__
from api.common.domain import OutputFile
from api.common.files import write_output
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job
from api.common.media import encode_exr, encode_image, encode_image_16, encode_linear_exr
from api.common.models import Weights
from api.common.runtime import ModelFamily, ModelRuntime
from api.common.services import Services
from api.images.context import ImageContext, Picture, build_context, output_suffixes
from api.images.loras import describe_loras
from api.images.registry import (
    CONTROLNET_MODES,
    CONTROLNETS,
    DIFFUSION_FAMILIES,
    IMAGE_MODELS,
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_WEIGHTS,
    IP_ADAPTERS,
    WITHOUT_ADAPTERS,
    ImageModel,
    Mode,
)
from api.images.schemas import (
    AnyImageRequest,
    ImageModelInfo,
    ImageOutput,
    ImageRequest,
    ImageResult,
    LoraInfo,
    stored_request,
)
from api.images.settings import image_settings
from api.images.sizing import default_size, smallest_side
from api.images.validation import lora_models, unavailable_reason

log = logging.getLogger("api.images")


def family(name: str) -> ModelFamily[ImageContext[Any], list[Picture]]:
    """The model module that runs a family (imported on first use: torch, diffusers and
    transformers load with the first job, not with the server). Each takes a context of its
    models' request (ImageRequest, UpscaleRequest...): the model chose it at validation."""
    if name in DIFFUSION_FAMILIES:
        from api.images.models import diffusion

        return diffusion
    if name == "openai":
        from api.images.models import openai_images

        return openai_images
    if name == "upscaler":
        from api.images.models import upscaler

        return upscaler
    if name == "depth":
        from api.images.models import depth

        return depth
    from api.images.models import segmentation

    return segmentation


def describe_models(services: Services) -> list[ImageModelInfo]:
    """The image models for GET /api/models: capabilities, defaults, weights, state, and
    whether this server can run each now (``available``; else ``reason`` says why)."""
    loaded = services.loaded_models()
    described: list[dict[str, Any]] = []
    for model in IMAGE_MODELS.values():
        weights = None
        if not model.external:
            weights = services.find_weights(model.name, model.repo)
        width, height = default_size(model, weights)
        described.append(
            {
                "name": model.name,
                "domain": "images",
                "family": model.family,
                "modes": sorted(model.modes),
                "external": model.external,
                "defaults": {
                    "width": width,
                    "height": height,
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
                "min_size": None if model.task else smallest_side(model, weights),
            }
        )
        reason = unavailable_reason(model, services)
        described[-1] |= {"available": reason is None, "reason": reason}
        if model.extra_weights:  # e.g. segment-anything's Grounding DINO
            described[-1]["weights"]["extra"] = [
                _describe_extra_weights(services, name, repo) for name, repo in model.extra_weights
            ]
        described[-1] |= _describe_adapters(services, model)
    return [ImageModelInfo.model_validate(info) for info in described]


def _describe_adapters(services: Services, model: ImageModel) -> dict[str, Any]:
    """The ControlNets and IP-Adapters a diffusion model takes, in which modes, and whether
    their weights are on this machine (an IP-Adapter's: its file in the h94 folder)."""
    if model.family not in DIFFUSION_FAMILIES or model.name in WITHOUT_ADAPTERS:
        return {}

    def find(name: str, repo: str, files: tuple[str, ...] | None = None) -> Weights | None:
        return services.find_weights(name, repo, files)

    def state(found: Weights | None, file: str = "") -> dict[str, bool]:
        present = (
            found is not None
            and found.source != "download"
            and (not file or Path(found.location, file).is_file())
        )
        return {"present": present, "tiny": bool(found and found.tiny)}

    controlnets = {
        kind: {"repo": repo, "modes": sorted(CONTROLNET_MODES[family] & model.modes)}
        | state(find(name, repo))
        for (family, kind), (name, repo) in CONTROLNETS.items()
        if family == model.family
    }
    adapters = find(*IP_ADAPTER_WEIGHTS, (f"{IP_ADAPTER_IMAGE_ENCODER}/config.json",))
    ip_adapters = {
        kind: {"repo": IP_ADAPTER_WEIGHTS[1], "weights": file, "modes": sorted(model.modes)}
        | state(adapters, file)
        for (family, kind), (subfolder, weight_name) in IP_ADAPTERS.items()
        if family == model.family
        for file in [f"{subfolder}/{weight_name}"]
    }
    return {"controlnets": controlnets, "ip_adapters": ip_adapters}


def _describe_extra_weights(services: Services, name: str, repo: str) -> dict[str, Any]:
    found = services.find_weights(name, repo)
    return {
        "name": name,
        "repo": repo,
        "source": found.source if found else None,
        "present": bool(found and found.source != "download"),
        "tiny": bool(found and found.tiny),
    }


def list_loras(services: Services) -> list[LoraInfo]:
    """The LoRAs in DD_LORAS_DIR (GET /api/loras): the family and models each fits."""
    return [
        LoraInfo(
            name=lora.name,
            family=lora.family,
            models=lora_models(lora.family),
            path=services.paths.to_client(lora.path),
            size_bytes=lora.size_bytes,
        )
        for lora in describe_loras(services)
    ]


def warm_up(services: Services) -> Callable[[str], None] | None:
    """What a runner does before its first job when DD_WARMUP names models: load them on
    its device and run each once (two steps at its native size), so that DD_COMPILE's
    compilation happens then, not in the first job."""
    names = image_settings(services.settings).warmup
    if not names:
        return None

    def on(device: str) -> None:
        for name in names:
            model = IMAGE_MODELS[name]
            started = time.perf_counter()
            mode = Mode.text_to_image if Mode.text_to_image in model.modes else Mode.image_to_image
            plate = Image.new("RGB", (model.width, model.height), (128, 128, 128))
            request = ImageRequest(
                model=name,
                prompt="warm-up",
                seed=0,
                num_inference_steps=2,
                guidance_scale=model.guidance_scale,
                strength=1.0,
                max_width=model.width,
                max_height=model.height,
            )
            context = ImageContext(
                model,
                mode,
                request,
                model.width,
                model.height,
                0,
                plate if mode == Mode.image_to_image else None,
                None,
                None,
            )
            family(model.family).run(context, ModelRuntime(services, device))
            log.info("%s warmed up on %s in %.1f s", name, device, time.perf_counter() - started)

    return on


def run_image_job(services: Services, job: Job, context: JobContext) -> ImageResult:
    """Run the model a job asks for and write its outputs where the request says."""
    image_context = build_context(stored_request(job.request), services)
    runtime = ModelRuntime(services, context.device, context.progress, context.check_cancelled)
    pictures, timings = family(image_context.model.family).run(image_context, runtime)
    context.check_cancelled()  # cancelled during the last step: write nothing

    started = time.perf_counter()
    outputs = write_pictures(services, job, image_context, pictures, runtime)
    timings["write_s"] = time.perf_counter() - started
    return ImageResult(
        images=outputs,
        seed=image_context.seed,
        mode=image_context.mode,
        tiny_weights=runtime.tiny,
        precision=runtime.precision,
        timings={name: round(value, 4) for name, value in timings.items()},
    )


def output_files(result: dict[str, Any]) -> list[OutputFile]:
    """The files an image job's result names (GET /api/files serves them)."""
    return [
        OutputFile(image["url"], image["path"], image.get("take_path"))
        for image in result.get("images", [])
    ]


def write_pictures(
    services: Services,
    job: Job,
    ctx: ImageContext[AnyImageRequest],
    pictures: list[Picture],
    runtime: ModelRuntime,
) -> list[ImageOutput]:
    """Write each picture (atomically, with its take when the client named the path). A
    batch's n-th image is ``<name>_000n<ext>``; each file carries the request that makes it
    again (its own seed and path, num_images 1, for an image of a batch)."""
    base = ctx.output_path
    keep_take = base is not None
    roots = services.paths.roots  # the client's path: inside the allowed roots
    if base is None:
        suffix = output_suffixes(ctx.mode, ctx.request)[0]
        base = services.data_dir / "outputs" / job.id / f"{ctx.model.name}_{ctx.seed}{suffix}"
        roots = [services.data_dir]
    metadata = ctx.metadata(runtime.tiny, runtime.precision) | {
        "job_id": job.id,
        "software": f"deferred-diffusion {__version__}",
    }
    request = ctx.request.model_dump(mode="json")
    batch = isinstance(ctx.request, ImageRequest) and ctx.request.num_images > 1
    to_client = services.paths.to_client
    outputs = []
    for number, picture in enumerate(pictures, 1):
        path, again, extra = base, request, {}
        if batch:
            path = base.with_name(f"{base.stem}_{number:04d}{base.suffix}")
            again = request | {
                "num_images": 1,
                "output_image_path": to_client(path) if keep_take else None,
            }
        elif picture.name:
            path = base.with_name(f"{base.stem}_{picture.name}{base.suffix}")
            extra = {"label": picture.label, "score": picture.score}
        if picture.seed is not None:
            again = again | {"seed": picture.seed}
            extra["seed"] = picture.seed
        data = encode_picture(picture, path.suffix, metadata | extra | {"request": again})
        take = write_output(path, data, roots, "output_image_path", keep_take)
        outputs.append(
            ImageOutput(
                path=to_client(path),
                url=f"/api/files/{job.id}/{path.name}",
                width=picture.image.width,
                height=picture.image.height,
                take_path=to_client(take) if take else None,
                label=picture.label,
                score=picture.score,
                seed=picture.seed,
            )
        )
    return outputs


def encode_picture(picture: Picture, suffix: str, metadata: dict[str, Any]) -> bytes:
    """A picture's file: from its float data where the format keeps it (EXR: depth as
    predicted, a generated image linear half float; 16-bit PNG/TIFF), else 8-bit."""
    array = picture.array
    if suffix.lower() == ".exr":
        assert array is not None  # validation allows .exr only where the model gives floats
        if array.ndim == 2:
            return encode_exr(array, metadata)
        return encode_linear_exr(array, metadata)
    if array is not None and array.ndim == 3:  # float kept for bit_depth 16
        return encode_image_16(array, suffix, metadata)
    return encode_image(picture.image, suffix, metadata)
