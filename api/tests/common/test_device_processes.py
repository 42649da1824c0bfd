"""Each device's jobs in a worker process of its own (DD_DEVICE_PROCESSES, and always with
several GPUs): the same jobs, progress, cancel and pixels as a runner thread, and a worker
that dies fails its job clearly and comes back for the next one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.tests.common.test_jobs import QUICK, SLOW, wait_for
from api.tests.conftest import app_state, files_under

pytestmark = pytest.mark.slow


@pytest.fixture
def worker_client(make_client) -> TestClient:
    return make_client(device_processes="always")


def worker_pid(client: TestClient) -> int:
    [runner] = [r for r in app_state(client).engine.runners if r.queue == "device"]
    return runner.process.pid


def test_a_job_runs_in_the_worker_process_with_the_same_pixels(
    worker_client, make_client, tmp_path: Path
):
    client = make_client(data_dir=tmp_path / "thread-data")  # its own queue
    job = worker_client.post("/api/images?wait=120", json=QUICK | {"seed": 4}).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["worker"] == "runner-cpu" and worker_pid(worker_client) != os.getpid()
    in_thread = client.post("/api/images?wait=120", json=QUICK | {"seed": 4}).json()
    ours = worker_client.get(job["result"]["images"][0]["url"]).content
    theirs = client.get(in_thread["result"]["images"][0]["url"]).content
    assert ours.split(b"IDAT")[1] == theirs.split(b"IDAT")[1]  # same pixels (job ids differ)
    [model] = [m for m in worker_client.get("/api/models").json() if m["name"] == "sd1.5"]
    assert model["loaded_on"] == ["cpu"]


def test_progress_and_cancel_cross_into_the_worker_and_a_dead_worker_comes_back(
    worker_client, workspace: Path
):
    out = workspace / "never.png"
    job = worker_client.post("/api/images", json=SLOW | {"output_image_path": str(out)}).json()
    wait_for(worker_client, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 2)
    assert worker_client.delete(f"/api/jobs/{job['id']}").status_code == 200
    done = wait_for(worker_client, job["id"], lambda j: j["status"] == "cancelled", timeout=20)
    assert done["progress"]["step"] < done["progress"]["total"]
    assert not out.exists() and files_under(workspace) == []

    # a worker that dies fails its job clearly, and is started again for the next one
    job = worker_client.post("/api/images", json=SLOW).json()
    wait_for(worker_client, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    first = worker_pid(worker_client)
    os.kill(first, signal.SIGKILL)
    failed = wait_for(worker_client, job["id"], lambda j: j["status"] == "failed", timeout=20)
    assert failed["error"]["type"] == "worker_died"
    assert "died while running this job" in failed["error"]["message"]
    after = worker_client.post("/api/images?wait=120", json=QUICK).json()
    assert after["status"] == "succeeded", after["error"]
    assert worker_pid(worker_client) != first
