"""A real ``python -m api serve`` process, the way a client sees it: killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).parents[3]
QUICK = {
    "model": "sd1.5",
    "prompt": "x",
    "num_inference_steps": 2,
    "max_width": 64,
    "max_height": 64,
}
SLOW = QUICK | {"num_inference_steps": 500, "max_width": 256, "max_height": 256}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.url = f"http://127.0.0.1:{env['DD_PORT']}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve"],
            env=self.env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server(tmp_path: Path, tiny_models: Path, workspace: Path) -> Iterator[Server]:
    env = os.environ | {
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(tmp_path / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": f'["{workspace}", "{tmp_path / "data"}"]',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("DD_API_KEYS", "DD_PATH_MAP", "DD_HOST"):
        env.pop(name, None)
    server = Server(env, tmp_path / "server.log")
    server.start()
    yield server
    server.stop()


def test_sigkill_mid_queue_loses_nothing(server: Server, workspace: Path):
    http = httpx.Client(base_url=server.url, timeout=30)
    running = http.post("/api/images", json=SLOW).json()
    queued = [
        http.post(
            "/api/images",
            json=QUICK | {"seed": seed, "output_image_path": f"{workspace}/q{seed}.png"},
        ).json()
        for seed in range(3)
    ]
    deadline = time.monotonic() + 60
    while (http.get(f"/api/jobs/{running['id']}").json()["progress"] or {}).get("step", 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [http.get(f"/api/jobs/{j['id']}").json()["status"] for j in queued] == ["queued"] * 3

    server.kill()
    server.start()

    interrupted = http.get(f"/api/jobs/{running['id']}").json()
    assert interrupted["status"] == "failed"
    assert interrupted["error"]["type"] == "interrupted"
    assert "stopped while this job was running" in interrupted["error"]["message"]
    for job in queued:
        done = http.get(f"/api/jobs/{job['id']}?wait=120").json()
        assert done["status"] == "succeeded", done
        assert Path(done["result"]["images"][0]["path"]).is_file()
    assert {j["id"] for j in http.get("/api/jobs?limit=10").json()} == {
        running["id"],
        *(j["id"] for j in queued),
    }


def test_served_over_real_http(server: Server):
    http = httpx.Client(base_url=server.url, timeout=60)
    job = http.post("/api/images?wait=60", json=QUICK).json()
    assert job["status"] == "succeeded"
    image = http.get(job["result"]["images"][0]["url"])
    assert image.headers["content-type"] == "image/png"
    assert image.content == Path(job["result"]["images"][0]["path"]).read_bytes()
    with http.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-2] == "event: result"


def test_a_second_server_on_the_same_data_dir_exits_and_the_first_keeps_its_jobs(
    server: Server, tmp_path: Path
):
    http = httpx.Client(base_url=server.url, timeout=60)
    running = http.post("/api/images", json=SLOW | {"num_inference_steps": 20}).json()
    second = subprocess.run(
        [sys.executable, "-m", "api", "serve"],
        env=server.env | {"DD_PORT": str(free_port())},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert str(tmp_path / "data") in second.stderr
    assert f"pid {server.process.pid}" in second.stderr
    assert "in use by another deferred-diffusion server" in second.stderr
    done = http.get(f"/api/jobs/{running['id']}?wait=120").json()
    assert done["status"] == "succeeded", done


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server: Server):
    """A body with no Content-Length (chunked) is counted as it arrives: the server answers
    413 once it passes the JSON limit and reads no more, so the client stops sending."""
    from api.main import MAX_JSON_BYTES

    chunk = b" " * 2**20
    total = 4 * MAX_JSON_BYTES // len(chunk)  # what the client would send if let
    sent = 0

    def body():
        nonlocal sent
        for _ in range(total):
            sent += 1
            yield chunk

    http = httpx.Client(base_url=server.url, timeout=60)
    response = http.post(
        "/api/images", content=body(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == {
        "type": "payload_too_large",
        "message": "too large: a request body is at most 128 MiB (send large inputs through "
        "POST /api/files)",
        "field": "body",
    }
    # The limit, plus what the sockets' buffers took before the connection closed.
    assert MAX_JSON_BYTES // len(chunk) < sent < 2 * MAX_JSON_BYTES // len(chunk)
    assert http.get("/api/jobs").json() == []
