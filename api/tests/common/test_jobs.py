"""The job engine through HTTP: wait, poll, list, events, cancel, concurrency."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from api.tests.conftest import app_state, files_under, write_image

QUICK = {
    "model": "sd1.5",
    "prompt": "a crate",
    "num_inference_steps": 3,
    "max_width": 64,
    "max_height": 64,
}
# About 20 s on 2 CPU cores: long enough to be caught running.
SLOW = QUICK | {"num_inference_steps": 500, "max_width": 256, "max_height": 256}


def wait_for(client: TestClient, job_id: str, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never matched; last: {job}")


def test_submit_then_poll(client: TestClient):
    response = client.post("/api/images", json=QUICK)
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "running")
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["request"]["seed"] is not None and job["request"]["guidance_scale"] == 7.5
    done = wait_for(client, job["id"], lambda j: j["status"] == "succeeded")
    # Every denoising step is reported (PNDM, sd1.5's scheduler, runs steps + 1 of them).
    assert done["progress"]["step"] == done["progress"]["total"] >= 3
    assert done["started_at"] and done["finished_at"] and done["queue_position"] is None
    waited = client.get(f"/api/jobs/{job['id']}?wait=5")
    assert waited.status_code == 200 and waited.json()["status"] == "succeeded"


def test_wait_returns_202_while_still_running(client: TestClient):
    response = client.post("/api/images?wait=0.5", json=SLOW)
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "running")
    client.delete(f"/api/jobs/{job['id']}")
    wait_for(client, job["id"], lambda j: j["status"] == "cancelled")


def test_list_filters_and_limit(client: TestClient):
    ids = [client.post("/api/images?wait=60", json=QUICK).json()["id"] for _ in range(3)]
    listed = client.get("/api/jobs?limit=2").json()
    assert [j["id"] for j in listed] == ids[::-1][:2]
    assert len(client.get("/api/jobs?status=succeeded&kind=images").json()) == 3
    assert client.get("/api/jobs?status=failed").json() == []
    bad = client.get("/api/jobs?status=exploded")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"


def test_events_stream_status_progress_and_result(client: TestClient):
    job = client.post("/api/images", json=QUICK | {"num_inference_steps": 5}).json()
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: ") :])))
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "result"
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses or statuses == ["succeeded"]
    progress = [data for name, data in events if name == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total"] >= 5
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps)
    assert events[-1][1]["images"][0]["width"] == 64


def test_input_removed_after_submit_fails_the_job_clearly(client: TestClient, workspace: Path):
    plate = write_image(workspace / "plate.png")
    busy = client.post("/api/images", json=SLOW).json()  # keeps the runner busy
    doomed = client.post("/api/images", json=QUICK | {"input_image_path": str(plate)}).json()
    plate.unlink()
    client.delete(f"/api/jobs/{busy['id']}")
    with client.stream("GET", f"/api/jobs/{doomed['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-2] == "event: error"
    error = json.loads(lines[-1][len("data: ") :])
    assert error["type"] == "invalid_input" and "input_image_path" in error["message"]
    assert client.get(f"/api/jobs/{doomed['id']}").json()["status"] == "failed"
    assert client.post("/api/images?wait=60", json=QUICK).json()["status"] == "succeeded"


def test_cancel_queued_job_never_runs(client: TestClient, tmp_path: Path):
    running = client.post("/api/images", json=SLOW).json()
    queued = client.post("/api/images", json=QUICK).json()
    assert client.get(f"/api/jobs/{queued['id']}").json()["queue_position"] == 1
    cancelled = client.delete(f"/api/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    client.delete(f"/api/jobs/{running['id']}")
    wait_for(client, running["id"], lambda j: j["status"] == "cancelled")
    later = client.post("/api/images?wait=60", json=QUICK).json()
    assert later["status"] == "succeeded"
    never = client.get(f"/api/jobs/{queued['id']}").json()
    assert never["status"] == "cancelled" and never["started_at"] is None
    assert not (tmp_path / "data" / "outputs" / queued["id"]).exists()
    again = client.delete(f"/api/jobs/{queued['id']}")
    assert again.status_code == 409 and again.json()["error"]["field"] == "id"


def test_cancel_running_job_stops_at_next_step(client: TestClient, workspace: Path):
    out = workspace / "never.png"
    job = client.post("/api/images", json=SLOW | {"output_image_path": str(out)}).json()
    wait_for(client, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    done = wait_for(client, job["id"], lambda j: j["status"] == "cancelled", timeout=10)
    assert done["progress"]["step"] < done["progress"]["total"]
    assert done["result"] is None and done["error"] is None
    assert not out.exists() and files_under(workspace) == []
    finished = client.delete(f"/api/jobs/{job['id']}")
    assert finished.status_code == 409


def test_twenty_concurrent_submissions(client: TestClient):
    def submit(seed: int) -> dict:
        return client.post(
            "/api/images?wait=300", json=QUICK | {"seed": seed, "num_inference_steps": 2}
        ).json()

    with ThreadPoolExecutor(20) as pool:
        jobs = list(pool.map(submit, range(20)))
    assert all(job["status"] == "succeeded" for job in jobs)
    paths = {job["result"]["images"][0]["path"] for job in jobs}
    contents = {Path(path).read_bytes() for path in paths}
    assert len(paths) == 20 and len(contents) == 20


def test_unknown_job(client: TestClient):
    for response in (
        client.get("/api/jobs/nope"),
        client.delete("/api/jobs/nope"),
        client.get("/api/jobs/nope/events"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


def test_events_of_a_queued_job_keep_alive_and_follow_the_queue(client: TestClient):
    app_state(client).engine.KEEPALIVE_SECONDS = 0.3
    busy = client.post("/api/images", json=SLOW).json()
    middle = client.post("/api/images", json=QUICK).json()
    last = client.post("/api/images", json=QUICK).json()
    lines = []
    with client.stream("GET", f"/api/jobs/{last['id']}/events") as stream:
        for line in stream.iter_lines():
            lines.append(line)
            if line == ": keepalive" and lines.count(": keepalive") == 2:
                client.delete(f"/api/jobs/{middle['id']}")  # the queue moves up...
            if line.startswith("data: ") and '"queue_position": 1' in line:
                client.delete(f"/api/jobs/{busy['id']}")  # ...and the runner frees up
    positions = [
        json.loads(line[len("data: ") :])["queue_position"]
        for line, previous in zip(lines[1:], lines, strict=False)
        if previous == "event: status"
    ]
    assert positions[:2] == [2, 1] and positions[-1] is None
    assert lines.count(": keepalive") >= 2
    assert "event: result" in lines


def test_shutdown_queues_the_running_job_again(make_settings, workspace: Path):
    from api.main import create_app

    out = workspace / "after-restart.png"
    settings = make_settings()
    with TestClient(create_app(settings, devices=["cpu"])) as client:
        body = SLOW | {"num_inference_steps": 100, "output_image_path": str(out)}
        job = client.post("/api/images", json=body).json()
        wait_for(client, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    # The server stopped mid-job: nothing written, the job back in the queue.
    assert not out.exists()
    with TestClient(create_app(settings, devices=["cpu"])) as client:
        done = client.get(f"/api/jobs/{job['id']}?wait=120").json()
        assert done["status"] == "succeeded", done
        assert out.is_file()
