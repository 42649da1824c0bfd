"""Requests and results of the texts domain (DESIGN §3.1): a conversation in, the answer
and the conversation with it out."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from api.common.domain import ModelInfo
from api.common.jobs.schemas import job_model
from api.common.schemas import MAX_PATH_CHARS, InputPath, JobRequest, Name, RequestModel

MAX_MESSAGES = 256
MAX_PARTS = 64
MAX_TEXT_CHARS = 100_000  # a message's text: a long brief, not a novel
MAX_ANSWER_TOKENS = 32_768

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class TextPart(RequestModel):
    type: Literal["text"]
    text: Text


class ImagePart(RequestModel):
    type: Literal["image"]
    image: InputPath = Field(
        description="A path on shared storage, a path from POST /api/files, or a data: URL."
    )


class VideoPart(RequestModel):
    type: Literal["video"]
    video: str = Field(
        max_length=MAX_PATH_CHARS,
        description="A video file (mp4, mov...) on shared storage; frames are sampled from "
        "it (2 a second, at most 32, spread evenly over a longer clip).",
    )


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(RequestModel):
    role: Literal["system", "user", "assistant"]
    content: Text | Annotated[list[Part], Field(min_length=1, max_length=MAX_PARTS)] = Field(
        description="Text, or parts: text, image and video, in any message."
    )


class TextRequest(JobRequest):
    """A conversation for a vision-language model: it answers the last message."""

    model: Name = Field(description="Model name, as listed by GET /api/models (qwen-2.5-vl).")
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="0 = greedy (always the same answer); the model's when absent.",
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Random when absent; the same seed, the same answer."
    )
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_ANSWER_TOKENS, description="The answer's length at most, in tokens."
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="The conversation's, images and video included.")
    completion_tokens: int


class TextResult(BaseModel):
    response: str
    chain_of_thought: list[Message] = Field(
        description="The messages and the assistant's reply: the next request's history."
    )
    usage: Usage
    seed: int
    tiny_weights: bool
    timings: dict[str, float]


class TextModelInfo(ModelInfo):
    """A text model (GET /api/models)."""

    domain: Literal["texts"] = "texts"
    context_length: int
    parts: list[str] = Field(description="What messages may hold: text, image, video.")


TextJob = job_model("texts", "TextJob", TextRequest, TextResult)
