"""The text models: user-facing names → weights, what they read, their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Part(StrEnum):
    """What a message's content can hold."""

    text = "text"
    image = "image"
    video = "video"


@dataclass(frozen=True)
class TextModel:
    name: str
    family: str  # qwen-vl: models/qwen_vl.py
    repo: str  # Hugging Face repo id of the weights
    context_length: int  # tokens the model reads, prompt (images and video included) + answer
    parts: frozenset[Part]  # what the messages may hold
    max_tokens: int = 512  # default length of an answer, in tokens
    temperature: float = 0.7  # default sampling temperature (0 = greedy)
    # Video parts: frames are sampled at video_fps, at most video_max_frames of them (evenly
    # over the whole clip when it is longer than video_max_frames / video_fps seconds).
    video_fps: float = 2.0
    video_max_frames: int = 32


TEXT_MODELS: dict[str, TextModel] = {
    model.name: model
    for model in (
        # Qwen's model card: 32,768 tokens of context (longer needs YaRN, which transformers'
        # generate does not apply here); videos sampled at 2 fps, as qwen-vl-utils does.
        TextModel(
            name="qwen-2.5-vl",
            family="qwen-vl",
            repo="Qwen/Qwen2.5-VL-3B-Instruct",
            context_length=32768,
            parts=frozenset(Part),
        ),
    )
}
