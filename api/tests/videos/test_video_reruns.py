"""A video job re-run (POST /api/jobs/{id}/rerun) through HTTP on a tiny model: the same
frames again, and overrides checked as a fresh submit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image


def frames(paths: list[str]) -> list[np.ndarray]:
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image))
    return arrays


def test_a_video_job_runs_again_with_the_same_frames(client: TestClient, workspace: Path):
    body = {
        "model": "ltx-video",
        "prompt": "storm clouds",
        "num_inference_steps": 2,
        "seed": 1,
        "output_frames_path": str(workspace / "frames" / "clouds.####.png"),
    }
    first = client.post("/api/videos?wait=300", json=body).json()
    assert first["status"] == "succeeded", first["error"]
    before = frames(first["result"]["frame_paths"])

    bad = client.post(f"/api/jobs/{first['id']}/rerun", json={"overrides": {"fps": 0}})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "overrides.fps", bad.text
    assert len(client.get("/api/jobs").json()) == 1

    again = client.post(f"/api/jobs/{first['id']}/rerun?wait=300").json()
    assert again["status"] == "succeeded", again["error"]
    assert again["request"] == first["request"] and again["kind"] == "videos"
    after = frames(again["result"]["frame_paths"])
    assert len(after) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
