"""The videos domain's public functions: describe its models, run a job (the model, then
the mp4 and its frames written), name its files. (Submit-time checks: ``validation``.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from api import __version__
from api.common.domain import OutputFile, WeightsInfo
from api.common.files import WriteFolder, write_output
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job
from api.common.media import encode_image
from api.common.runtime import ModelFamily, ModelRuntime
from api.common.services import Services
from api.common.video import decode_mp4, encode_mp4, probe_mp4, tag_mp4
from api.videos.context import Clip, VideoContext, build_context, frame_path
from api.videos.registry import VIDEO_MODELS
from api.videos.schemas import FramesInfo, VideoModelInfo, VideoOutput, VideoRequest, VideoResult
from api.videos.validation import (
    default_frames,
    default_size,
    default_steps,
    unavailable_reason,
)


def family(name: str) -> ModelFamily[VideoContext, Clip]:
    """The model module that runs a family (imported on first use: torch and diffusers load
    with the first job; the Runway SDK with the first Runway job)."""
    if name == "runway":
        from api.videos.models import runway

        return runway
    from api.videos.models import diffusion

    return diffusion


def describe_models(services: Services) -> list[VideoModelInfo]:
    """The video models for GET /api/models: modes, sizes, frame rules, weights, state."""
    loaded = services.loaded_models()
    described = []
    for model in VIDEO_MODELS.values():
        weights = None if model.external else services.find_weights(model.name, model.repo)
        width, height = default_size(model, weights)
        reason = unavailable_reason(model, services)
        described.append(
            VideoModelInfo(
                name=model.name,
                family=model.family,
                modes=sorted(model.modes),
                external=model.external,
                available=reason is None,
                reason=reason,
                defaults={
                    "width": width,
                    "height": height,
                    "num_frames": default_frames(model, weights),
                    "fps": model.fps,
                    "num_inference_steps": default_steps(model, weights),
                    "guidance_scale": model.guidance_scale,
                },
                step_cache=model.step_cache,
                frames=FramesInfo(
                    rule=model.frames_rule,
                    min=model.min_frames,
                    max=model.max_frames,
                    default=model.frames,
                ),
                weights=WeightsInfo(
                    repo=model.repo,
                    source=weights.source if weights else None,
                    present=model.external or bool(weights and weights.source != "download"),
                    tiny=bool(weights and weights.tiny),
                ),
                loaded_on=loaded.get(model.name, []),
            )
        )
    return described


def run_video_job(services: Services, job: Job, context: JobContext) -> VideoResult:
    """Run the model a job asks for, then write its mp4 (and frames) where the request says."""
    request = VideoRequest.model_validate(job.request)
    video_context = build_context(request, services)
    runtime = ModelRuntime(services, context.device, context.progress, context.check_cancelled)
    clip, timings = family(video_context.model.family).run(video_context, runtime)
    context.check_cancelled()  # cancelled during the last step: write nothing
    started = time.perf_counter()
    output, frame_paths = write_clip(services, job, video_context, clip, runtime)
    timings["write_s"] = time.perf_counter() - started
    return VideoResult(
        video=output,
        frame_paths=frame_paths,
        seed=video_context.seed,
        mode=video_context.mode,
        tiny_weights=runtime.tiny,
        precision=runtime.precision,
        timings={name: round(value, 4) for name, value in timings.items()},
        provider_task=clip.provider_task,
        step_cache=clip.step_cache,
    )


def metadata(ctx: VideoContext, job: Job, runtime: ModelRuntime) -> dict[str, Any]:
    """Every generation parameter, written into the mp4's tags and each frame's PNG."""
    request = ctx.request
    return {
        "model": ctx.model.name,
        "repo": ctx.model.repo,
        "provider": "runway" if ctx.model.external else None,
        "mode": ctx.mode,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt if ctx.model.negative_prompt else None,
        "seed": ctx.seed,
        "num_frames": ctx.frames,
        "fps": ctx.fps,
        "num_inference_steps": None if ctx.model.external else request.num_inference_steps,
        "guidance_scale": None if ctx.model.external else request.guidance_scale,
        "step_cache": request.step_cache or None,
        "width": ctx.width,
        "height": ctx.height,
        "input_image_path": request.input_image_path,
        "tiny_weights": runtime.tiny,
        "precision": runtime.precision,
        "job_id": job.id,
        "software": f"deferred-diffusion {__version__}",
    }


def write_clip(
    services: Services, job: Job, ctx: VideoContext, clip: Clip, runtime: ModelRuntime
) -> tuple[VideoOutput, list[str] | None]:
    """Write the mp4 (atomically, with its take when the client named the path) and, with
    output_frames_path, a PNG per frame numbered from start_frame."""
    record = {key: value for key, value in metadata(ctx, job, runtime).items() if value is not None}
    if clip.frames is not None:
        data = encode_mp4(clip.frames, ctx.fps, record)
    else:
        assert clip.mp4 is not None  # a provider's
        data = tag_mp4(clip.mp4, record)
    path = ctx.output_path
    roots = services.paths.roots  # the client's path: inside the allowed roots
    if path is None:
        path = services.data_dir / "outputs" / job.id / f"{ctx.model.name}_{ctx.seed}.mp4"
        roots = [services.data_dir]
    take = write_output(
        path, data, roots, "output_video_path", keep_take=ctx.output_path is not None
    )
    info = probe_mp4(data)
    to_client = services.paths.to_client
    output = VideoOutput(
        path=to_client(path),
        url=f"/api/files/{job.id}/{path.name}",
        frames=info.frames,
        fps=info.fps,
        width=info.width,
        height=info.height,
        take_path=to_client(take) if take else None,
    )
    pattern = ctx.request.output_frames_path
    if pattern is None:
        return output, None
    frames = clip.frames if clip.frames is not None else decode_mp4(data)
    return output, [to_client(p) for p in write_frames(services, pattern, ctx, frames, record)]


def write_frames(
    services: Services, pattern: str, ctx: VideoContext, frames: Any, record: dict[str, Any]
) -> list[Path]:
    """Each frame as a PNG (atomically, generation metadata and its number in it)."""
    from PIL import Image

    first = frame_path(pattern, ctx.request.start_frame)
    first_path = services.paths.resolve_output_path(first, "output_frames_path", (".png",))
    names = Path(pattern).name  # the '#' run: the frame number
    written = []
    with WriteFolder(
        first_path.parent, services.paths.roots, "output_frames_path", "the frames' folder"
    ) as folder:
        for index, pixels in enumerate(frames):
            number = ctx.request.start_frame + index
            name = frame_path(names, number)
            image = Image.fromarray(pixels)
            folder.write(name, encode_image(image, ".png", record | {"frame": number}))
            written.append(folder.path / name)
    return written


def output_files(result: dict[str, Any]) -> list[OutputFile]:
    """The mp4 a video job's result names (GET /api/files serves it)."""
    video = result.get("video")
    return [OutputFile(video["url"], video["path"], video.get("take_path"))] if video else []
