"""The texts model on CUDA (tiny weights): bf16 straight onto the GPU, resident between
jobs, the same seed giving the same answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from api.common.models import CacheKey
from api.main import create_app
from api.tests.conftest import app_state, write_image

pytestmark = pytest.mark.gpu


def test_chat_on_the_gpu(make_settings, workspace: Path):
    plate = write_image(workspace / "plate.png", (64, 48))
    body = {
        "model": "qwen-2.5-vl",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(plate)},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ],
        "temperature": 1.0,
        "seed": 4,
        "max_tokens": 16,
    }
    with TestClient(create_app(make_settings(), devices=["cuda:0"])) as client:
        answers = [client.post("/api/texts?wait=300", json=body).json() for _ in range(2)]
        loaded = (
            app_state(client)
            .services.model_cache("cuda:0")
            .get(CacheKey("qwen-2.5-vl"), lambda: pytest.fail("resident"))
        )
    for job in answers:
        assert job["status"] == "succeeded", job["error"]
    assert answers[0]["result"]["response"] == answers[1]["result"]["response"]
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.device == torch.device("cuda:0")
