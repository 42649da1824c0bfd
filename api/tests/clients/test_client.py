"""The client package against a real server process: run with progress, cancel, a refusal,
upload, polling, time-outs; and the CLI the farm uses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deferred_diffusion import Client, DeferredDiffusionError, Progress
from PIL import Image

from api.tests.clients.conftest import CLIENT_PACKAGE
from api.tests.common.test_server_process import QUICK, SLOW, Server
from api.tests.conftest import write_image

pytestmark = pytest.mark.slow


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


def test_run_follows_the_job_and_reports_progress(client: Client, server_root: Path):
    output = server_root / "run" / "lighthouse.png"
    seen: list[Progress] = []
    job = client.run("images", QUICK | {"output_image_path": str(output)}, on_progress=seen.append)
    assert job["status"] == "succeeded"
    assert job["result"]["images"][0]["path"] == str(output)
    with Image.open(output) as image:
        assert image.size == (64, 64)
    steps = [(p.step, p.total or 0) for p in seen if p.step is not None]
    assert steps and steps[-1][0] == steps[-1][1] >= 2, seen  # denoising steps, then decoding
    assert seen[-1].status == "succeeded"
    assert {p.job_id for p in seen} == {job["id"]}
    # the stream starts from the job's state when the client subscribes: on a quick job the
    # first step may be over by then, so the first step seen is whichever came first
    first = next(p for p in seen if p.step is not None and p.status == "running")
    assert first.describe().startswith(f"running {first.step}/{first.total}")


def test_cancel_from_the_progress_callback(client: Client):
    cancelled: list[str] = []

    def cancel_after_a_step(progress: Progress) -> None:
        if progress.step is not None and progress.step >= 1 and not cancelled:
            cancelled.append(client.cancel(progress.job_id)["id"])

    with pytest.raises(DeferredDiffusionError) as raised:
        client.run("images", SLOW, on_progress=cancel_after_a_step)
    assert raised.value.type == "cancelled"
    assert raised.value.job is not None
    assert client.get(raised.value.job["id"])["status"] == "cancelled"
    with pytest.raises(DeferredDiffusionError) as again:
        client.cancel(raised.value.job["id"])
    assert again.value.status == 409


def test_a_refusal_raises_the_servers_error(client: Client):
    with pytest.raises(DeferredDiffusionError) as raised:
        client.submit("images", QUICK | {"steps": 3})
    error = raised.value
    assert (error.status, error.type, error.field) == (422, "invalid_field", "steps")
    assert "did you mean num_inference_steps" in error.message
    assert "steps" in str(error)
    with pytest.raises(DeferredDiffusionError) as unknown:
        client.get("no-such-job")
    assert unknown.value.status == 404


def test_upload_gives_a_path_the_server_takes(client: Client, tmp_path: Path):
    plate = write_image(tmp_path / "plate.png", (64, 48))
    path = client.upload(plate)
    assert path != str(plate)
    job = client.run("images", QUICK | {"input_image_path": path, "strength": 0.5})
    assert job["result"]["mode"] == "image_to_image"
    copy = client.download(job["result"]["images"][0]["url"], tmp_path / "out.png")
    with Image.open(copy) as image:
        assert image.size == (64, 48)
    with pytest.raises(DeferredDiffusionError) as raised:
        client.upload(Path(__file__))
    assert (raised.value.status, raised.value.field) == (422, "file")


def test_polling_and_a_time_out(client: Client):
    job = client.submit("images", QUICK | {"seed": 3})
    seen: list[Progress] = []
    done = client.wait(job["id"], on_progress=seen.append, poll=True)
    assert done["status"] == "succeeded" and seen[-1].status == "succeeded"

    slow = client.submit("images", SLOW)
    with pytest.raises(DeferredDiffusionError) as raised:
        client.wait(slow["id"], timeout=0.5)
    assert raised.value.type == "timeout"
    assert client.cancel(slow["id"])["status"] in ("cancelled", "running")


def test_settings_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DD_SERVER_ADDRESS", server.url + "/")
    monkeypatch.setenv("DD_API_KEY", "a-key")
    with Client() as client:
        assert client.base_url == server.url
        assert client.http.headers["Authorization"] == "Bearer a-key"
        assert {m["domain"] for m in client.models()} >= {"images", "videos", "texts"}
        assert {m["domain"] for m in client.models("texts")} == {"texts"}
    with Client("http://127.0.0.1:1") as nowhere, pytest.raises(DeferredDiffusionError) as raised:
        nowhere.health()
    assert raised.value.type == "connection_error"


def cli(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deferred_diffusion", "--server", server.url, *args],
        cwd=CLIENT_PACKAGE,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_submit_wait_jobs_models_and_cancel(server: Server, tmp_path: Path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(QUICK | {"seed": 11}))
    done = cli(server, "submit", "images", str(request), "--wait")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["request"]["seed"] == 11
    assert re.search(rf"{job['id']} running (\d+)/\1\n", done.stderr), done.stderr

    queued = cli(server, "submit", "images", "-", stdin=json.dumps(SLOW))
    assert queued.returncode == 0, queued.stderr
    slow = json.loads(queued.stdout)
    assert slow["status"] == "queued"
    listed = cli(server, "jobs", "--limit", "5")
    assert job["id"] in listed.stdout and slow["id"] in listed.stdout
    cancelled = cli(server, "cancel", slow["id"])
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["id"] == slow["id"]
    again = cli(server, "cancel", job["id"])
    assert again.returncode == 1 and again.stderr.startswith("error: conflict")

    models = cli(server, "models", "--domain", "videos", "--json")
    assert {m["domain"] for m in json.loads(models.stdout)} == {"videos"}


def test_cli_refusal_exits_with_the_servers_message(server: Server, tmp_path: Path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(QUICK | {"model": "SDXL"}))
    refused = cli(server, "submit", "images", str(request), "--wait")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "error: invalid_field (model): model: unknown image model 'SDXL'" in refused.stderr
    assert "did you mean 'sdxl'" in refused.stderr
    request.write_text("[1, 2]")
    assert "must hold a JSON object" in cli(server, "submit", "images", str(request)).stderr


def test_cli_wait_on_a_job_that_does_not_succeed_exits_non_zero(server: Server, tmp_path: Path):
    """``submit --wait`` on a job cancelled meanwhile (e.g. by an artist): exit 1, the job on
    stdout, the reason on stderr."""
    request = tmp_path / "request.json"
    request.write_text(json.dumps(SLOW))
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    with Client(server.url) as client:
        before = {job["id"] for job in client.jobs()}
        waiting = threading.Thread(
            target=lambda: result.update(
                done=cli(server, "submit", "images", str(request), "--wait")
            )
        )
        waiting.start()
        for _ in range(1200):
            new = [job for job in client.jobs(limit=5) if job["id"] not in before]
            if new:
                client.cancel(new[0]["id"])
                break
            time.sleep(0.05)
        waiting.join(120)
    done = result["done"]
    assert done.returncode == 1
    assert "error: cancelled" in done.stderr
    assert json.loads(done.stdout)["status"] == "cancelled"
