"""Runway through HTTP: a job at the fake Runway (the SDK pointed at it by the settings),
its status as progress, its mp4 tagged and served, its failures and its cancel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.common.video import probe_mp4
from api.tests.conftest import write_image
from api.tests.videos.fake_runway import KEY, Failure, FakeRunway, serving


@pytest.fixture
def runway() -> Iterator[FakeRunway]:
    with serving() as server:
        yield server


@pytest.fixture
def client(runway: FakeRunway, make_client) -> TestClient:
    return make_client(
        runwayml_api_secret=KEY, runwayml_base_url=runway.base_url, runway_poll_seconds=0.01
    )


def request(workspace: Path, **extra) -> dict:
    plate = write_image(workspace / "plate.png", (160, 90))  # 16:9
    return {
        "model": "runway-gen4-turbo",
        "prompt": "the crate drifts out to sea",
        "input_image_path": str(plate),
        "seed": 11,
        "num_frames": 50,  # 2 s at 24 fps is 48: the nearest Runway makes
    } | extra


def test_image_to_video_at_runway(client: TestClient, runway: FakeRunway, workspace: Path):
    out = workspace / "runway.mp4"
    response = client.post(
        "/api/videos?wait=60", json=request(workspace, output_video_path=str(out))
    )
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    assert job["worker"] == "runner-external" and job["request"]["num_frames"] == 48
    [create] = runway.calls("POST")
    assert create.body["model"] == "gen4_turbo" and create.body["ratio"] == "1280:720"
    assert create.body["duration"] == 2 and create.body["seed"] == 11
    assert create.body["promptText"] == "the crate drifts out to sea"
    assert create.headers["authorization"] == f"Bearer {KEY}"
    result = job["result"]
    task = result["provider_task"]
    assert task["provider"] == "runway" and task["task_id"] in runway.tasks
    info = probe_mp4(out)
    assert info.metadata["provider"] == "runway" and info.metadata["job_id"] == job["id"]
    assert (info.frames, info.fps) == (result["video"]["frames"], 24.0) == (48, 24.0)
    assert client.get(result["video"]["url"]).content == out.read_bytes()
    assert job["progress"]["step"] == 100 and "Runway task" in job["progress"]["status"]


def test_runways_failure_fails_the_job(client: TestClient, runway: FakeRunway, workspace: Path):
    runway.statuses = [("RUNNING", 0.1), Failure("the content was refused", "SAFETY")]
    job = client.post("/api/videos?wait=60", json=request(workspace)).json()
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert "the content was refused (SAFETY)" in job["error"]["message"]
    assert client.get("/health").status_code == 200  # the server keeps serving


def test_cancel_deletes_the_task_at_runway(client: TestClient, runway: FakeRunway, workspace: Path):
    runway.statuses = [("RUNNING", 0.5)]  # never finishes by itself
    job = client.post("/api/videos", json=request(workspace)).json()
    for _ in range(500):
        if runway.tasks:
            break
        client.get(f"/api/jobs/{job['id']}?wait=0.02")
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    done = client.get(f"/api/jobs/{job['id']}?wait=30").json()
    assert done["status"] == "cancelled"
    [task] = runway.tasks.values()
    assert task.deleted


def test_runway_takes_only_what_it_can(client: TestClient, workspace: Path):
    for field, value, words in (
        ("max_width", 512, "does not apply to runway-gen4-turbo"),
        ("seed", 2**40, "takes seeds 0 to 4294967295"),
        ("prompt", "x" * 1001, "at most 1000 characters"),
    ):
        response = client.post("/api/videos", json=request(workspace, **{field: value}))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field and words in error["message"]
    assert client.get("/api/jobs").json() == []
    # What any job may carry applies to a provider's too.
    urgent = client.post("/api/videos?wait=60", json=request(workspace, priority=5)).json()
    assert urgent["status"] == "succeeded" and urgent["request"]["priority"] == 5
