"""Shared fixtures: tiny models built once per session, a fresh server (app) per test."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from starlette.datastructures import State

from api.domains import Settings
from api.main import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run only where CUDA is; ``real_weights`` ones only with DD_REAL_MODELS_DIR."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    no_weights = pytest.mark.skip(reason="needs real checkpoints in DD_REAL_MODELS_DIR")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "real_weights" in item.keywords and not os.environ.get("DD_REAL_MODELS_DIR"):
            item.add_marker(no_weights)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every domain's tiny models, written once by the same code as ``python -m api
    tiny-models``."""
    from api.domains import DOMAINS

    folder = tmp_path_factory.mktemp("tiny-models")
    for domain in DOMAINS:
        if domain.build_tiny_models is not None:
            domain.build_tiny_models(folder, None)
    return folder


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The allowed root of a test: inputs and outputs live here."""
    root = tmp_path / "show"
    root.mkdir()
    return root


@pytest.fixture
def make_settings(tmp_path: Path, tiny_models: Path, workspace: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "models_dir": tiny_models,
            "allowed_roots": [workspace, tmp_path / "data"],
            "allow_downloads": False,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides), devices=["cpu"]))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def write_image(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """A deterministic test picture: a gradient with a square, or (mode L) a mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    pixels = (x * 0.5 + y * 0.5 + rng.uniform(0, 30, (h, w, 3))).clip(0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    w, h = size
    mask = Image.new("L", size, 0)
    mask.paste(255, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    mask.save(path)
    return path


def png_metadata(path: Path) -> dict[str, Any]:
    with Image.open(path) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile), image.format
        return json.loads(image.text["deferred-diffusion"])


def app_state(client: TestClient) -> State:
    """The server's ``app.state`` (TestClient types its app as any ASGI app)."""
    assert isinstance(client.app, FastAPI)
    return client.app.state


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def image_request(workspace: Path, mode: str, plate: tuple[int, int] = (64, 64), **extra) -> dict:
    """A small, fast image request (64x64, 2 steps, seed 7); image→image and inpainting
    get a plate (and a mask) of size ``plate`` written into ``workspace``."""
    body = {
        "prompt": "a lighthouse at dusk",
        "seed": 7,
        "num_inference_steps": 2,
        "max_width": 64,
        "max_height": 64,
        "strength": 0.75,
    }
    if mode != "text_to_image":
        body["input_image_path"] = str(write_image(workspace / "plate.png", plate))
    if mode == "inpainting":
        body["input_mask_path"] = str(write_mask(workspace / "mask.png", plate))
    return body | extra


def run_job(client: TestClient, body: dict) -> dict:
    """Submit an image request, wait for it, and return the job, which must have succeeded."""
    response = client.post("/api/images?wait=120", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    return job


def assert_nothing_happened(client: TestClient, tmp_path: Path, before: list[Path]) -> None:
    """After a rejection: no job, no output, no upload, no file changed under the test."""
    assert client.get("/api/jobs").json() == []
    assert files_under(tmp_path / "data" / "outputs") == []
    assert files_under(tmp_path / "data" / "uploads") == []
    assert files_under(tmp_path) == before


def assert_rejected(
    client: TestClient, tmp_path: Path, body: dict, status: int, field: str, message: str = ""
) -> dict:
    """Submit ``body``: refused with ``status`` naming ``field`` (and saying ``message``),
    with no job created and nothing written. Returns the error."""
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]
    assert_nothing_happened(client, tmp_path, before)
    return error


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
