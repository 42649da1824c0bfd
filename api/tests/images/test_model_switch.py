"""Switching models on a device that holds one (DD_MAX_LOADED_MODELS=1), through HTTP on the
tiny models: a model unloaded and loaded again makes the same pixels for the same request.
(Keeping unloaded models in RAM, DD_UNLOADED_MODELS_RAM, applies to GPUs only: its cache
logic is in tests/common/test_model_cache.py, its pixels in the GPU tests.)"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from api.tests.conftest import decode

REQUESTS = {
    "sdxl": {"model": "sdxl", "prompt": "a lighthouse", "num_inference_steps": 2, "seed": 4},
    "flux-schnell": {"model": "flux-schnell", "prompt": "a lighthouse", "seed": 4},
}


def test_switching_back_makes_the_same_pixels(make_client: Callable[..., TestClient]):
    client = make_client(max_loaded_models=1)

    def run(model: str) -> np.ndarray:
        job = client.post("/api/images?wait=120", json=REQUESTS[model]).json()
        assert job["status"] == "succeeded", job["error"]
        return np.asarray(decode(client.get(job["result"]["images"][0]["url"]).content))

    def loaded() -> set[str]:
        return {m["name"] for m in client.get("/api/models").json() if m.get("loaded_on")}

    first = {model: run(model) for model in ("sdxl", "flux-schnell")}
    assert loaded() == {"flux-schnell"}  # one at a time: sdxl was unloaded
    for model in ("sdxl", "flux-schnell"):
        assert np.array_equal(run(model), first[model]), model
        assert loaded() == {model}
