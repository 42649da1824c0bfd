"""The real Qwen2.5-VL, where a machine has it: DD_REAL_MODELS_DIR=<folder with qwen-2.5-vl/>.

Loaded through the same ``load`` as the tiny model (on the GPU when there is one), it must
see what it is shown: the colour of a plate, the colours of a video, in a follow-up too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from api.tests.texts.conftest import write_video
from api.texts.models.qwen_vl import chat, load, sample_video_frames
from api.texts.registry import TEXT_MODELS

pytestmark = pytest.mark.real_weights


def test_real_qwen_vl_sees_images_and_video(tmp_path: Path) -> None:
    folder = Path(os.environ["DD_REAL_MODELS_DIR"]) / "qwen-2.5-vl"
    if not folder.is_dir():
        pytest.skip(f"no {folder}")
    spec = TEXT_MODELS["qwen-2.5-vl"]
    model, processor = load(str(folder), "cuda:0" if torch.cuda.is_available() else "cpu")

    def ask(messages: list[dict]) -> str:
        response, usage = chat(
            model,
            processor,
            messages,
            temperature=0,
            seed=0,
            max_tokens=16,
            context_length=spec.context_length,
        )
        assert usage.completion_tokens <= 16
        return response.lower()

    plate = Image.new("RGB", (512, 384), (220, 20, 20))
    question = {"type": "text", "text": "What colour is this image? Answer with one word."}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image", "image": plate}, question]}
    ]
    answer = ask(messages)
    assert "red" in answer
    follow_up = [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And what is the opposite of that colour? One word."},
    ]
    assert ask(follow_up).strip()

    colours = [(20, 20, 220)] * 8 + [(20, 200, 20)] * 8
    clip = sample_video_frames(write_video(tmp_path / "take.mp4", colours, fps=4), 2.0, 32)
    video = {"type": "video", "frames": clip.frames, "fps": clip.fps}
    text = {"type": "text", "text": "Which two colours does this video show? Answer briefly."}
    answer = ask([{"role": "user", "content": [video, text]}])
    assert "blue" in answer and "green" in answer
