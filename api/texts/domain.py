"""The texts domain, as the server registers it (api.domains): /api/texts, and the
OpenAI-compatible /v1 beside it."""

from __future__ import annotations

from pathlib import Path

from api.common.domain import Domain
from api.texts import openai_compat, service
from api.texts.registry import TEXT_MODELS
from api.texts.router import router
from api.texts.schemas import TextJob, TextModelInfo


def build_tiny_models(models_dir: Path, names: list[str] | None) -> list[str]:
    from api.texts.models.tiny import build_tiny_text_models  # transformers: only when asked

    return build_tiny_text_models(models_dir, names)


TEXTS = Domain(
    kind="texts",
    router=router,
    job=TextJob,
    model_info=TextModelInfo,
    describe_models=service.describe_models,
    run_job=service.run_text_job,
    output_files=service.output_files,
    tiny_model_names=tuple(TEXT_MODELS),
    build_tiny_models=build_tiny_models,
    model_modules=("api.texts.models.qwen_vl",),
    extra_routers=(("/v1", openai_compat.router),),
)
