"""The texts domain's public functions: describe its models, run a job (the conversation's
images and video frames read, the model's answer), and ``describe_image``, what other
domains (the agent) call to have a picture described."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from api.common.domain import OutputFile, WeightsInfo
from api.common.errors import JobFailure
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job
from api.common.media import open_image
from api.common.models import CacheKey
from api.common.pipelines import compile_mode
from api.common.runtime import ModelRuntime
from api.common.services import Services
from api.texts.registry import TEXT_MODELS, TextModel
from api.texts.schemas import (
    ImagePart,
    Message,
    TextModelInfo,
    TextPart,
    TextRequest,
    TextResult,
    Usage,
)
from api.texts.validation import find_model, unavailable_reason, validate_request


def describe_models(services: Services) -> list[TextModelInfo]:
    loaded = services.loaded_models()
    described = []
    for model in TEXT_MODELS.values():
        weights = services.find_weights(model.name, model.repo)
        reason = unavailable_reason(model, services)
        described.append(
            TextModelInfo(
                name=model.name,
                family=model.family,
                modes=["chat"],
                external=False,
                available=reason is None,
                reason=reason,
                defaults={"temperature": model.temperature, "max_tokens": model.max_tokens},
                context_length=model.context_length,
                parts=sorted(model.parts),
                weights=WeightsInfo(
                    repo=model.repo,
                    source=weights.source if weights else None,
                    present=bool(weights and weights.source != "download"),
                    tiny=bool(weights and weights.tiny),
                ),
                loaded_on=loaded.get(model.name, []),
            )
        )
    return described


def read_messages(
    request: TextRequest, services: Services, model: TextModel
) -> list[dict[str, Any]]:
    """The conversation as the model reads it: each image part opened, each video part's
    frames sampled (paths resolved again: files may have changed since submit)."""
    from api.texts.models.qwen_vl import sample_video_frames

    paths = services.paths
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        for number, part in enumerate(message.content):
            field = f"messages.{index}.content.{number}"
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
            elif part.type == "image":
                path = paths.resolve_input_path(part.image, f"{field}.image")
                parts.append({"type": "image", "image": open_image(path, f"{field}.image")})
            else:
                path = paths.resolve_input_path(part.video, f"{field}.video")
                clip = sample_video_frames(path, model.video_fps, model.video_max_frames)
                parts.append({"type": "video", "frames": clip.frames, "fps": clip.fps})
        messages.append({"role": message.role, "content": parts})
    return messages


def answer(
    request: TextRequest, services: Services, runtime: ModelRuntime
) -> tuple[str, Usage, dict[str, float]]:
    """The model's answer to a validated request (its defaults filled), on ``runtime``'s
    device: the model loaded once and kept, progress carrying the text so far."""
    from api.texts.models.qwen_vl import chat, load

    started = time.perf_counter()
    model = find_model(request.model)
    messages = read_messages(request, services, model)
    weights = runtime.weights(model.name, model.repo)
    loaded = runtime.resident(
        CacheKey(model.name), lambda: load(weights.location, runtime.device), weights
    )
    loaded_at = time.perf_counter()
    assert request.temperature is not None and request.seed is not None and request.max_tokens

    def progress(tokens: int, total: int, text: str) -> None:
        runtime.progress(tokens, total, text=text)

    response, usage = chat(
        loaded.model,
        loaded.processor,
        messages,
        temperature=request.temperature,
        seed=request.seed,
        max_tokens=request.max_tokens,
        progress=progress,
        check_cancelled=runtime.check_cancelled,
        context_length=model.context_length,
        compile_decoding=runtime.on_gpu and compile_mode(runtime.services.settings.speed) != "off",
    )
    timings = {"load_s": loaded_at - started, "inference_s": time.perf_counter() - loaded_at}
    return (
        response,
        Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
        timings,
    )


def run_text_job(services: Services, job: Job, context: JobContext) -> TextResult:
    """Answer the job's conversation; the result holds it with the reply appended."""
    request = TextRequest.model_validate(job.request)
    runtime = ModelRuntime(services, context.device, context.progress, context.check_cancelled)
    response, usage, timings = answer(request, services, runtime)
    assert request.seed is not None
    return TextResult(
        response=response,
        chain_of_thought=[*request.messages, Message(role="assistant", content=response)],
        usage=usage,
        seed=request.seed,
        tiny_weights=runtime.tiny,
        timings={name: round(value, 4) for name, value in timings.items()},
    )


def describe_image(
    services: Services,
    image_path: str,
    question: str,
    check_cancelled: Callable[[], None],
    model: str = "qwen-2.5-vl",
    seed: int = 0,
    max_tokens: int = 256,
    priority: int = 0,
) -> str:
    """What the texts model says of one picture, asked ``question``: the call other domains
    use (the agent describing references). It is a texts job of its own, on the devices'
    queue where the model stays resident, at ``priority`` (the asking job's), checked like
    any request (the path against the allowed roots); a cancel of the asking job cancels
    it."""
    request = TextRequest(
        model=model,
        messages=[
            Message(
                role="user",
                content=[
                    ImagePart(type="image", image=image_path),
                    TextPart(type="text", text=question),
                ],
            )
        ],
        temperature=0,
        seed=seed,
        max_tokens=max_tokens,
        priority=priority,
    )
    checked = validate_request(request, services)
    job = services.jobs.run_and_wait(
        "texts", model, checked.model_dump(mode="json"), check_cancelled
    )
    if job.status != "succeeded":
        error = job.error
        detail = f"{error.type}: {error.message}" if error else str(job.status)
        raise JobFailure(f"describing {image_path} failed ({detail})", type="tool_failed")
    return str(job.result["response"])


def output_files(result: dict[str, Any]) -> list[OutputFile]:
    """A text job writes no files."""
    return []
