"""The tiny video models: diffusers' layout, small, deterministic, loadable as the real ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from api.common.models import TINY_MARKER
from api.videos.models.tiny import build_tiny_video_models, tiny_video_models
from api.videos.registry import VIDEO_MODELS

PIPELINE_CLASSES = {
    "stable-video-diffusion": "StableVideoDiffusionPipeline",
    "cogvideox": "CogVideoXImageToVideoPipeline",
    "ltx-video": "LTXPipeline",
    "wan-2.1": "WanImageToVideoPipeline",
}


def _file_hashes(root: Path) -> dict[str, str]:
    """The video models' files (the folder may hold other domains' tiny models too)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for name in PIPELINE_CLASSES
        for path in sorted((root / name).rglob("*"))
        if path.is_file()
    }


def test_every_local_model_has_a_tiny_copy() -> None:
    local = [name for name, model in VIDEO_MODELS.items() if not model.external]
    assert list(tiny_video_models()) == local == list(PIPELINE_CLASSES)


@pytest.mark.parametrize("name", list(PIPELINE_CLASSES))
def test_layout_and_size(tiny_video_models: Path, name: str) -> None:
    folder = tiny_video_models / name
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == PIPELINE_CLASSES[name]
    assert json.loads((folder / TINY_MARKER).read_text()) == {
        "built_by": "deferred-diffusion tiny-models",
        "imitates": VIDEO_MODELS[name].repo,
        "model": name,
        "tiny": True,
    }
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 10_000_000, f"{name} is {size} bytes"
    weights = list(folder.rglob("*.safetensors"))
    assert weights and not list(folder.rglob("*.bin"))
    for path in weights:
        with safe_open(path, "pt") as tensors:
            assert all(tensors.get_slice(k).get_dtype() == "F32" for k in tensors.keys())


def test_build_is_deterministic(tiny_video_models: Path, tmp_path: Path) -> None:
    assert build_tiny_video_models(tmp_path) == list(PIPELINE_CLASSES)
    assert _file_hashes(tmp_path) == _file_hashes(tiny_video_models)


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny video models: \\['sora'\\]"):
        build_tiny_video_models(tmp_path, ["sora"])
    assert list(tmp_path.iterdir()) == []
