"""Fixtures of the videos tests: the tiny video models, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_video_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every tiny local video model, written once by the same code as ``python -m api
    tiny-models``."""
    from api.videos.models.tiny import build_tiny_video_models

    folder = tmp_path_factory.mktemp("tiny-video-models")
    build_tiny_video_models(folder)
    return folder
