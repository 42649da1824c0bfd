"""The videos domain, as the server registers it (api.domains)."""

from __future__ import annotations

from pathlib import Path

from api.common.domain import Domain
from api.videos import service
from api.videos.registry import VIDEO_MODELS
from api.videos.router import check_request, router
from api.videos.schemas import VideoJob, VideoModelInfo
from api.videos.settings import VideoSettings


def build_tiny_models(models_dir: Path, names: list[str] | None) -> list[str]:
    from api.videos.models.tiny import build_tiny_video_models  # diffusers: only when asked

    return build_tiny_video_models(models_dir, names)


VIDEOS = Domain(
    kind="videos",
    router=router,
    job=VideoJob,
    model_info=VideoModelInfo,
    describe_models=service.describe_models,
    run_job=service.run_video_job,
    output_files=service.output_files,
    settings=VideoSettings,
    tiny_model_names=tuple(name for name, model in VIDEO_MODELS.items() if not model.external),
    build_tiny_models=build_tiny_models,
    model_modules=("api.videos.models.diffusion",),
    check_request=check_request,
)
