"""Several GPUs, one runner each: jobs spread over the cards (each card's in a worker process
of its own), every component on its runner's own device, and the same seed giving the same
pixels on either card. Needs two CUDA GPUs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.tests.conftest import app_state, decode

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
    ),
]

MODELS = ("sd1.5", "sdxl", "flux-schnell")
QUICK = {"prompt": "x", "num_inference_steps": 2, "max_width": 64, "max_height": 64}


def pixels(client: TestClient, job: dict) -> np.ndarray:
    return np.asarray(decode(client.get(job["result"]["images"][0]["url"]).content))


def run_all(client: TestClient, bodies: list[dict]) -> list[dict]:
    jobs = [client.post("/api/images", json=body).json() for body in bodies]
    done = [client.get(f"/api/jobs/{job['id']}?wait=300").json() for job in jobs]
    for job in done:
        assert job["status"] == "succeeded", job["error"]
    return done


def components_on(client: TestClient, device: str) -> dict[str, set[tuple[str, str]]]:
    """(device, dtype) of every tensor of every resident pipeline on ``device``'s runner."""
    cache = app_state(client).services.model_cache(device)
    placed: dict[str, set[tuple[str, str]]] = {}
    for key in cache.keys():
        loaded = cache.get(key, lambda: pytest.fail("resident"))
        for name, component in loaded.base.components.items():
            if isinstance(component, torch.nn.Module):
                placed[f"{key}/{name}"] = {
                    (str(t.device), str(t.dtype)) for t in component.state_dict().values()
                }
    return placed


@pytest.mark.parametrize("compile", ["off", "auto"])
def test_twelve_jobs_over_two_gpus(make_settings, compile: str):
    bodies = [QUICK | {"model": m, "seed": s} for m in MODELS for s in (1, 2)] * 2
    with TestClient(
        create_app(make_settings(compile=compile), devices=["cuda:0", "cuda:1"])
    ) as client:
        done = run_all(client, bodies)
        assert {job["worker"] for job in done} == {"runner-cuda:0", "runner-cuda:1"}
        for first, again in zip(done[:6], done[6:], strict=True):
            assert np.array_equal(pixels(client, first), pixels(client, again))
        # several GPUs: each runs its jobs in a worker process of its own (torch.compile)
        device_runners = [r for r in app_state(client).engine.runners if r.queue == "device"]
        pids = {runner.process.pid for runner in device_runners}
        assert len(pids) == 2
        loaded = {m["name"]: m["loaded_on"] for m in client.get("/api/models").json()}
        assert set(sum((loaded[m] for m in MODELS), [])) == {"cuda:0", "cuda:1"}


def test_cuda_1_alone_matches_cuda_0(make_settings):
    results = {}
    for device in ("cuda:0", "cuda:1"):
        settings = make_settings(compile="off", data_dir=make_settings().data_dir / device)
        with TestClient(create_app(settings, devices=[device])) as client:
            done = run_all(client, [QUICK | {"model": m, "seed": 5} for m in MODELS])
            assert {job["worker"] for job in done} == {f"runner-{device}"}
            results[device] = [pixels(client, job) for job in done]
            for where in components_on(client, device).values():
                assert {d for d, _ in where} == {device}
    for on_0, on_1 in zip(results["cuda:0"], results["cuda:1"], strict=True):
        assert np.array_equal(on_0, on_1)
