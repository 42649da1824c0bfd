"""Fixtures of the videos tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_video_models(tiny_models: Path) -> Path:
    """The tiny models folder (every domain's, the video models among them)."""
    return tiny_models
