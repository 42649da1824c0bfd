"""Real checkpoints, where a machine has them: DD_REAL_MODELS_DIR=<folder with sdxl/, ...>.

Each present model runs text→image at its native size (few steps) through the server, on
the GPU when there is one, and must give a real picture: not tiny, not flat."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.images.registry import IMAGE_MODELS, Mode
from api.main import create_app
from api.tests.conftest import decode

pytestmark = pytest.mark.real_weights

LOCAL = [
    m.name
    for m in IMAGE_MODELS.values()
    if Mode.text_to_image in m.modes and not m.external and m.task is None
]


@pytest.mark.parametrize("model", LOCAL)
def test_real_checkpoint_makes_a_picture(make_settings, model: str):
    models_dir = Path(os.environ["DD_REAL_MODELS_DIR"])
    if not (models_dir / model).is_dir():
        pytest.skip(f"no {models_dir / model}")
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    with TestClient(create_app(make_settings(models_dir=models_dir), devices=[device])) as client:
        job = client.post(
            "/api/images?wait=600",
            json={
                "model": model,
                "prompt": "a red apple on a wooden table, photo",
                "num_inference_steps": 4,
                "seed": 1,
            },
        ).json()
        assert job["status"] == "succeeded", job["error"]
        assert job["result"]["tiny_weights"] is False
        [image] = job["result"]["images"]
        spec = IMAGE_MODELS[model]
        assert (image["width"], image["height"]) == (spec.width, spec.height)
        pixels = np.asarray(decode(client.get(image["url"]).content), dtype=np.float32)
        assert pixels.std() > 5  # a picture, not a flat or black frame
