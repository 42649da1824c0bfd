"""CUDA paths on the tiny models: half precision, loading straight to the GPU, CPU offload."""

from __future__ import annotations

from pathlib import Path

import cv2
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


@pytest.mark.parametrize("model", ["sdxl", "flux-schnell"])
def test_batches_exr_16_bit_and_reruns_on_the_gpu(
    gpu_client: TestClient, workspace: Path, model: str
):
    """bf16 on the card: a batch's second image re-run alone is the same, and the EXR and
    16-bit outputs come from the float decode (not an 8-bit upcast)."""
    import OpenEXR

    batch = workspace / "sh010.png"
    job = gpu_client.post(
        "/api/images?wait=120",
        json=QUICK | {"model": model, "num_images": 2, "output_image_path": str(batch)},
    ).json()
    assert job["status"] == "succeeded", job["error"]
    second = Path(job["result"]["images"][1]["path"])
    before = np.asarray(decode(second.read_bytes()))
    again = gpu_client.post("/api/images/rerun?wait=120", json={"image_path": str(second)}).json()
    assert again["status"] == "succeeded", again["error"]
    assert np.array_equal(np.asarray(decode(second.read_bytes())), before)

    exr, deep = workspace / "sh010.exr", workspace / "sh010_16.png"
    for path, extra in ((exr, {}), (deep, {"bit_depth": 16})):
        done = gpu_client.post(
            "/api/images?wait=120",
            json=QUICK | {"model": model, "output_image_path": str(path)} | extra,
        ).json()
        assert done["status"] == "succeeded", done["error"]
    with OpenEXR.File(str(exr)) as file:
        linear = np.array(file.channels()["RGB"].pixels)
    assert linear.dtype == np.float16 and linear.shape == (64, 64, 3)
    sixteen = cv2.imread(str(deep), cv2.IMREAD_UNCHANGED)
    assert sixteen is not None and sixteen.dtype == np.uint16 and sixteen.shape == (64, 64, 3)
    assert np.any(sixteen % 257)  # not an 8-bit image scaled up


def test_a_model_compiled_whole_stops_compiling_after_its_first_sizes(make_settings, workspace):
    """DD_COMPILE=full (the default where Triton is): the first two plain sizes compile (a
    static graph each: a size gives the same pixels every time), a third size and a LoRA
    run without compiling again (eagerly, where no graph fits)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from api.common.pipelines import CompileBudget

    # as in a fresh process: no graphs or budgets left by the tests before this one
    torch._dynamo.reset()
    CompileBudget._of_model.clear()

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    settings = make_settings(compile="full")
    with TestClient(create_app(settings, devices=["cuda:0"])) as client:

        def run(size: int, **extra) -> np.ndarray:
            body = QUICK | {"model": "sdxl", "max_width": size, "max_height": size} | extra
            job = client.post("/api/images?wait=600", json=body).json()
            assert job["status"] == "succeeded", job["error"]
            return np.asarray(decode(client.get(job["result"]["images"][0]["url"]).content))

        first = run(64)
        run(96)
        compiled = graphs()
        assert np.array_equal(run(64), first)  # its own static graph: the same pixels
        run(128)
        run(64, loras=[{"name": "tiny-sdxl", "scale": 1.0}])
        assert graphs() == compiled


@pytest.mark.parametrize("ram", ["0", "50%"], ids=["reloaded", "kept-in-ram"])
def test_switching_back_makes_the_same_pixels_on_the_gpu(make_settings, ram: str):
    """One model at a time on the card, compiled as by default: sdxl → flux → sdxl → flux,
    each unloaded and loaded again, or kept in RAM and moved back (DD_UNLOADED_MODELS_RAM):
    the same request makes the same pixels after switching back, and the model that left
    gave its GPU memory back (compiled graphs hold no reference to its weights)."""
    import torch

    settings = make_settings(max_loaded_models=1, unloaded_models_ram=ram)
    with TestClient(create_app(settings, devices=["cuda:0"])) as client:
        before = torch.cuda.memory_allocated()
        held: dict[str, int] = {}

        def run(model: str) -> np.ndarray:
            job = client.post("/api/images?wait=600", json=QUICK | {"model": model}).json()
            assert job["status"] == "succeeded", job["error"]
            held.setdefault(model, torch.cuda.memory_allocated() - before)
            return np.asarray(decode(client.get(job["result"]["images"][0]["url"]).content))

        first = {model: run(model) for model in ("sdxl", "flux-schnell")}
        for model, other in (("sdxl", "flux-schnell"), ("flux-schnell", "sdxl")):
            assert np.array_equal(run(model), first[model]), model
            # only this model on the card: what it held alone, not the other's on top
            assert torch.cuda.memory_allocated() - before < held[model] + held[other] / 2, model
