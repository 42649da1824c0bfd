"""Weights that are absent while downloads are off: refused at submit (422 naming the field,
the folder looked in and the `hf download` command), and shown in /api/models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.tests.conftest import assert_rejected, image_request, run_job, write_image


@pytest.fixture
def models_without(
    tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """A models dir holding every tiny model but the named folders (links to the tiny ones)."""

    def make(*missing: str) -> Path:
        folder = tmp_path_factory.mktemp("models")
        for entry in tiny_models.iterdir():
            if entry.name not in missing:
                (folder / entry.name).symlink_to(entry)
        return folder

    return make


def control(workspace: Path, kind: str, **extra) -> dict:
    path = write_image(workspace / f"control_{kind}.png")
    return {"model": kind, "image_path": str(path)} | extra


CASES = {
    "the model": (
        "sdxl",
        lambda ws: image_request(ws, "text_to_image", model="sdxl"),
        "model",
        "stabilityai/stable-diffusion-xl-base-1.0",
    ),
    "a ControlNet": (
        "controlnet-sd1.5-canny",
        lambda ws: image_request(
            ws,
            "text_to_image",
            model="sd1.5",
            controlnets=[control(ws, "depth"), control(ws, "canny")],
        ),
        "controlnets.1.model",
        "lllyasviel/sd-controlnet-canny",
    ),
    "depth-anything for a depth control image made on the server": (
        "depth-anything",
        lambda ws: image_request(
            ws, "text_to_image", model="sd1.5", controlnets=[control(ws, "depth", preprocess=True)]
        ),
        "controlnets.0.preprocess",
        "depth-anything/Depth-Anything-V2-Large-hf",
    ),
    "the IP-Adapter folder": (
        "IP-Adapter",
        lambda ws: image_request(
            ws, "text_to_image", model="sdxl", ip_adapters=[control(ws, "style")]
        ),
        "ip_adapters",
        "h94/IP-Adapter",
    ),
    "segment-anything's Grounding DINO": (
        "grounding-dino",
        lambda ws: {
            "model": "segment-anything",
            "prompt": "car",
            "input_image_path": str(write_image(ws / "plate.png")),
        },
        "model",
        "IDEA-Research/grounding-dino-base",
    ),
}


@pytest.mark.parametrize(("missing", "body", "field", "repo"), CASES.values(), ids=list(CASES))
def test_absent_weights_are_refused_at_submit(
    make_client, models_without, workspace: Path, tmp_path: Path, missing, body, field, repo
):
    models = models_without(missing)
    client = make_client(models_dir=models)
    error = assert_rejected(client, tmp_path, body(workspace), 422, field, str(models / missing))
    assert f"`hf download {repo} --local-dir {models / missing}`" in error["message"]
    assert "DD_ALLOW_DOWNLOADS=false" in error["message"]


def test_hf_hub_offline_also_means_no_downloads(
    make_client, models_without, workspace: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = make_client(models_dir=models_without("sdxl"), allow_downloads=True)
    body = image_request(workspace, "text_to_image", model="sdxl")
    assert_rejected(client, tmp_path, body, 422, "model", "downloads are off (HF_HUB_OFFLINE=1)")


def test_only_the_weights_a_request_needs_are_asked_for(
    make_client, models_without, workspace: Path
):
    """Without depth-anything, a depth ControlNet with a ready depth image still runs."""
    client = make_client(models_dir=models_without("depth-anything", "controlnet-sd1.5-canny"))
    run_job(
        client,
        image_request(
            workspace, "text_to_image", model="sd1.5", controlnets=[control(workspace, "depth")]
        ),
    )


def test_models_list_says_what_is_available(
    make_client, models_without, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    models_dir = models_without("sdxl", "grounding-dino")
    client: TestClient = make_client(models_dir=models_dir)
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert (models["sd1.5"]["available"], models["sd1.5"]["reason"]) == (True, None)
    assert models["sdxl"]["available"] is False
    assert f"--local-dir {models_dir / 'sdxl'}" in models["sdxl"]["reason"]
    assert models["segment-anything"]["available"] is False
    assert str(models_dir / "grounding-dino") in models["segment-anything"]["reason"]
    assert models["gpt-image-1"]["available"] is False
    assert "OPENAI_API_KEY" in models["gpt-image-1"]["reason"]
    assert all(set(m) >= {"available", "reason"} for m in models.values())

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # and downloads allowed: sdxl would be downloaded
    online = make_client(models_dir=models_dir, allow_downloads=True)
    models = {m["name"]: m for m in online.get("/api/models").json()}
    assert models["sdxl"]["available"] is True and models["sdxl"]["weights"]["source"] == "download"
    assert models["gpt-image-1"]["available"] is True
