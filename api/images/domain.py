"""The images domain, as the server registers it (api.domains)."""

from __future__ import annotations

from pathlib import Path

from api.common.domain import Domain
from api.images import service
from api.images.registry import weights_folders
from api.images.router import check_request, router
from api.images.schemas import ImageJob, ImageModelInfo
from api.images.settings import ImageSettings, check_settings


def build_tiny_models(models_dir: Path, names: list[str] | None) -> list[str]:
    from api.images.models.tiny import build_tiny_image_models  # diffusers: only when asked

    return build_tiny_image_models(models_dir, names)


IMAGES = Domain(
    kind="images",
    router=router,
    job=ImageJob,
    model_info=ImageModelInfo,
    describe_models=service.describe_models,
    run_job=service.run_image_job,
    output_files=service.output_files,
    settings=ImageSettings,
    check_settings=check_settings,
    warm_up=service.warm_up,
    model_modules=("api.images.models.diffusion",),
    tiny_model_names=weights_folders(),
    build_tiny_models=build_tiny_models,
    check_request=check_request,
)
