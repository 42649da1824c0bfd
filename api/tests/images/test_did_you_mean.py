"""Unknown model and field names are refused with the name that was probably meant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.tests.conftest import assert_rejected, image_request, write_image


@pytest.mark.parametrize(
    ("given", "meant"),
    [("SDXL", "sdxl"), ("flux", "flux-schnell"), ("sd15", "sd1.5"), ("Realvisxl", "RealVisXL")],
)
def test_unknown_model(client: TestClient, workspace: Path, tmp_path: Path, given, meant):
    body = image_request(workspace, "text_to_image", model=given)
    error = assert_rejected(client, tmp_path, body, 422, "model", f"did you mean {meant!r}?")
    assert f"unknown image model {given!r}" in error["message"]


def test_unknown_model_nothing_close(client: TestClient, workspace: Path, tmp_path: Path):
    body = image_request(workspace, "text_to_image", model="qwen-2.5-vl")
    error = assert_rejected(client, tmp_path, body, 422, "model", "choose one of sd1.5, sdxl")
    assert "did you mean" not in error["message"]


FIELD_CASES = {
    "steps": ({"steps": 4}, "steps", "num_inference_steps"),
    "width": ({"width": 64}, "width", "max_width"),
    "seeds": ({"seeds": 1}, "seeds", "seed"),
    "controlnets.0.scale": (
        {"controlnets": [{"model": "depth", "image_path": "/x.png", "scale": 0.5}]},
        "controlnets.0.scale",
        "conditioning_scale",
    ),
    "ip_adapters.0.mask": (
        {"ip_adapters": [{"model": "style", "image_path": "/x.png", "mask": "/m.png"}]},
        "ip_adapters.0.mask",
        "mask_path",
    ),
}


@pytest.mark.parametrize(("extra", "field", "meant"), FIELD_CASES.values(), ids=list(FIELD_CASES))
def test_unknown_field(client: TestClient, workspace: Path, tmp_path: Path, extra, field, meant):
    body = image_request(workspace, "text_to_image", model="sd1.5") | extra
    error = assert_rejected(client, tmp_path, body, 422, field)
    assert error["message"] == f"{field}: Extra inputs are not permitted (did you mean {meant}?)"


def test_unknown_field_nothing_close_lists_the_fields(
    client: TestClient, workspace: Path, tmp_path: Path
):
    plate = write_image(workspace / "plate.png")
    body = {"model": "sd1.5", "input_image_path": str(plate), "zzz": 1}
    error = assert_rejected(client, tmp_path, body, 422, "zzz", "its fields: model, ")
    assert "num_inference_steps" in error["message"]
    assert "box_threshold" not in error["message"]  # segmentation's, not sd1.5's


def test_a_task_model_suggests_only_its_own_fields(
    client: TestClient, workspace: Path, tmp_path: Path
):
    plate = write_image(workspace / "plate.png")
    body: dict[str, Any] = {
        "model": "depth-anything",
        "input_image_path": str(plate),
        "depth_fromat": "exr",
    }
    assert_rejected(client, tmp_path, body, 422, "depth_fromat", "did you mean depth_format?")
    body = {"model": "depth-anything", "input_image_path": str(plate), "steps": 2}
    error = assert_rejected(client, tmp_path, body, 422, "steps", "its fields: model, ")
    assert "num_inference_steps" not in error["message"]  # depth takes no steps
