"""The "did you mean" of unknown request fields comes from the route's own body model,
whatever its shape: nested models, lists, unions (no table of field names)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field

from api.common.http import install_error_handlers


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opacity: float = 1.0


class Render(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["render"]
    frame_start: int = 1
    layers: list[Layer] = []


class Upscale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["upscale"]
    scale_factor: int = 4


def make_app() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/tasks")
    def submit(body: Annotated[Render | Upscale, Field(discriminator="kind")]) -> dict:
        return body.model_dump()

    return TestClient(app)


def test_hints_follow_the_body_model():
    client = make_app()
    cases = [
        ({"kind": "render", "framestart": 3}, "render.framestart", "frame_start"),
        ({"kind": "upscale", "factor": 2}, "upscale.factor", "scale_factor"),
        ({"kind": "render", "layers": [{"opacty": 0.5}]}, "render.layers.0.opacty", "opacity"),
    ]
    for body, field, meant in cases:
        response = client.post("/tasks", json=body)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["type"] == "invalid_field" and error["field"] == field
        assert (
            error["message"] == f"{field}: Extra inputs are not permitted (did you mean {meant}?)"
        )
    # a field of the other member of the union is no hint here
    error = client.post("/tasks", json={"kind": "upscale", "frame_start": 2}).json()["error"]
    assert error["message"] == (
        "upscale.frame_start: Extra inputs are not permitted (valid fields: kind, scale_factor)"
    )
    assert client.post("/tasks", json={"kind": "upscale", "scale_factor": 2}).status_code == 200
