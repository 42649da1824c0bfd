"""CUDA paths on the tiny models: half precision, loading straight to the GPU, CPU offload."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.tests.conftest import decode

pytestmark = pytest.mark.gpu

QUICK = {"prompt": "x", "num_inference_steps": 2, "max_width": 64, "max_height": 64, "seed": 3}


@pytest.fixture
def gpu_client(make_settings):
    with TestClient(create_app(make_settings(), devices=["cuda:0"])) as client:
        yield client


@pytest.mark.parametrize("model", ["sd1.5", "sdxl", "sd3", "flux-schnell"])
@pytest.mark.parametrize("low_vram", [False, True])
def test_generates_on_the_gpu(gpu_client: TestClient, model: str, low_vram: bool):
    job = gpu_client.post(
        "/api/images?wait=120", json=QUICK | {"model": model, "optimize_low_vram": low_vram}
    ).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["images"][0]["width"] == 64
    again = gpu_client.post(
        "/api/images?wait=120", json=QUICK | {"model": model, "optimize_low_vram": low_vram}
    ).json()
    first = decode(gpu_client.get(job["result"]["images"][0]["url"]).content)
    second = decode(gpu_client.get(again["result"]["images"][0]["url"]).content)
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_health_reports_gpu_memory(gpu_client: TestClient):
    [device] = gpu_client.get("/health").json()["devices"]
    assert device["device"] == "cuda:0" and device["memory_total_mb"] > 0
