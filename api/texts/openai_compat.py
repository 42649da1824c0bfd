"""An OpenAI-compatible face on the texts jobs: ``POST /v1/chat/completions`` (OpenAI's
request and response shapes, ``stream`` as SSE chunks ending ``data: [DONE]``) and
``GET /v1/models``, so any OpenAI client (the ``openai`` SDK, pydantic-ai, LangChain,
Open WebUI) can use this server's vision-language model. Each call is a texts job."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.common.errors import ApiError, InvalidField, Unavailable, error_responses
from api.common.jobs.router import submit_job
from api.common.jobs.schemas import Job
from api.texts.registry import TEXT_MODELS
from api.texts.schemas import MAX_MESSAGES, MAX_TEXT_CHARS, TextRequest
from api.texts.validation import validate_request

router = APIRouter(tags=["openai"])

# How long a call without ``stream`` waits for its job, at most (then 503).
ANSWER_SECONDS = 3600


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(description="A data: URL, or a path this server can read.")


class ChatPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    image_url: ImageUrl | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool calls...: not used here
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | list[ChatPart] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request (the fields this server uses; others are ignored,
    as OpenAI-compatible servers do)."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=0, lt=2**63)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False


def text_request(body: ChatCompletionRequest) -> TextRequest:
    """OpenAI's request as a texts request (image_url parts become image parts)."""
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        if message.content is None or isinstance(message.content, str):
            messages.append({"role": role, "content": message.content or ""})
            continue
        parts = []
        for number, part in enumerate(message.content):
            if part.type == "text":
                parts.append({"type": "text", "text": part.text or ""})
            elif part.image_url is not None:
                parts.append({"type": "image", "image": part.image_url.url})
            else:
                field = f"messages.{index}.content.{number}.image_url"
                raise InvalidField(f"{field}: an image_url part needs its url", field)
        messages.append({"role": role, "content": parts})
    try:
        return TextRequest.model_validate(
            {
                "model": body.model,
                "messages": messages,
                "temperature": body.temperature,
                "seed": body.seed,
                "max_tokens": body.max_completion_tokens or body.max_tokens,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "messages"
        raise InvalidField(f"{field}: {first['msg']}", field) from None


def completion(job: Job) -> dict[str, Any]:
    """A finished texts job in OpenAI's chat completion shape."""
    result = job.result or {}
    usage = result.get("usage", {"prompt_tokens": 0, "completion_tokens": 0})
    return {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": job.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.get("response", "")},
                "finish_reason": finish_reason(job),
                "logprobs": None,
            }
        ],
        "usage": usage | {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }


def finish_reason(job: Job) -> str:
    """``length`` when the answer used every token it was allowed, else ``stop``."""
    used = (job.result or {}).get("usage", {}).get("completion_tokens", 0)
    return "length" if used >= job.request.get("max_tokens", 0) else "stop"


def chunk(job: Job, delta: dict[str, str], finish: str | None = None) -> str:
    body = {
        "id": f"chatcmpl-{job.id}",
        "object": "chat.completion.chunk",
        "created": int(job.created_at.timestamp()),
        "model": job.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


class JobEnded(ApiError):
    """A call whose job failed or was cancelled: the job's error, as an error answer."""

    status = 500

    def __init__(self, job: Job) -> None:
        error = job.error
        super().__init__(error.message if error else f"job {job.id} was {job.status}")
        self.type = error.type if error else str(job.status)


def error_event(data: dict[str, Any]) -> str:
    error = {"type": data.get("type", "cancelled"), "message": data.get("message", "cancelled")}
    return f"data: {json.dumps({'error': error})}\n\n"


@router.post(
    "/chat/completions",
    operation_id="openai_chat_completions",
    responses={
        200: {"description": "OpenAI's chat.completion, or with `stream` its SSE chunks."},
        **error_responses(400, 403, 413, 422, 503),
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """OpenAI's chat completions, run as a texts job (it shows in /api/jobs)."""
    services = request.app.state.services
    engine = request.app.state.engine
    checked = await run_in_threadpool(validate_request, text_request(body), services)
    job = await submit_job(request, "texts", checked.model, checked.model_dump(mode="json"))
    if body.stream:
        headers = {"Cache-Control": "no-store"}
        return StreamingResponse(
            stream(engine, job), media_type="text/event-stream", headers=headers
        )
    done = await engine.wait(job.id, ANSWER_SECONDS)
    if not done.finished:
        raise Unavailable(f"no answer after {ANSWER_SECONDS} s: follow job {job.id} at /api/jobs")
    if done.status != "succeeded":
        raise JobEnded(done)
    return completion(done)


async def stream(engine: Any, job: Job) -> AsyncIterator[str]:
    """The answer as OpenAI's chunks: the role, then the text as it is generated (from the
    job's progress events), a last chunk with the finish reason, then ``[DONE]``."""
    sent = ""
    yield chunk(job, {"role": "assistant", "content": ""})
    async for event, data in engine.follow(job.id):
        if event == "progress" and data.get("text", "").startswith(sent):
            if len(data["text"]) > len(sent):
                yield chunk(job, {"content": data["text"][len(sent) :]})
                sent = data["text"]
        elif event == "result":
            response = data["response"]
            if response.startswith(sent) and len(response) > len(sent):
                yield chunk(job, {"content": response[len(sent) :]})
            done = await engine.get(job.id)
            yield chunk(job, {}, finish_reason(done))
        elif event == "error" or (event == "status" and data["status"] == "cancelled"):
            yield error_event(data)
    yield "data: [DONE]\n\n"


@router.get("/models", operation_id="openai_models")
def models() -> dict[str, Any]:
    """The texts models, as OpenAI lists models."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "deferred-diffusion"}
            for name in TEXT_MODELS
        ],
    }
