"""Fixtures of the texts tests: the tiny text models, built once per session, and the tiny
Qwen2.5-VL loaded through the same ``load`` as real weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from api.texts.models.qwen_vl import QwenVL


@pytest.fixture(scope="session")
def tiny_text_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny text model, written once by the same code as ``python -m api tiny-models``."""
    from api.texts.models.tiny import build_tiny_text_models

    folder = tmp_path_factory.mktemp("tiny-text-models")
    build_tiny_text_models(folder)
    return folder


@pytest.fixture(scope="session")
def qwen_vl(tiny_text_models: Path) -> QwenVL:
    from api.texts.models.qwen_vl import load

    return load(str(tiny_text_models / "qwen-2.5-vl"), "cpu")


def write_video(
    path: Path, colours: list[tuple[int, int, int]], fps: int, size: tuple[int, int] = (64, 48)
) -> Path:
    """An H.264 video, one frame of each colour, ``fps`` frames a second."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for colour in colours:
            pixels = np.full((height, width, 3), colour, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
