"""A real ``python -m api serve`` process, the way a client sees it: killed and restarted."""

from __future__ import annotations

import os
import re
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
    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        """``port``: given as ``serve --port`` (else DD_PORT is the port)."""
        self.env = env
        self.log = log
        self.flags = ["--port", str(port)] if port else []
        self.url = f"http://127.0.0.1:{port or env['DD_PORT']}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve", *self.flags],
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
    """A server on the tiny models, its port given as ``--port`` (DD_PORT names another);
    with a typo among its variables, an allowed root that isn't there, and a path map."""
    env = os.environ | {
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(tmp_path / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_MODEL_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": f'["{workspace}", "{tmp_path / "data"}", "{tmp_path / "absent"}"]',
        "DD_PATH_MAP": f'{{"P:/elsewhere": "{tmp_path / "elsewhere"}"}}',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("DD_API_KEYS", "DD_HOST", "DD_LOG_LEVEL", "PYTHONWARNINGS", "TQDM_DISABLE"):
        env.pop(name, None)
    server = Server(env, tmp_path / "server.log", port=free_port())
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


def test_served_over_real_http(server: Server, tmp_path: Path, tiny_models: Path):
    http = httpx.Client(base_url=server.url, timeout=60)
    job = http.post("/api/images?wait=60", json=QUICK).json()
    assert job["status"] == "succeeded"
    image = http.get(job["result"]["images"][0]["url"])
    assert image.headers["content-type"] == "image/png"
    assert image.content == Path(job["result"]["images"][0]["path"]).read_bytes()
    with http.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-2] == "event: result"
    server.stop()
    assert_log_says_what_it_served(server, job, tmp_path, tiny_models)


def assert_log_says_what_it_served(server: Server, job: dict, tmp_path: Path, tiny: Path) -> None:
    """The log says what is served (once, before listening), one line per job start and end
    with timings, and carries no progress bar or library warning."""
    log = server.log.read_text()
    before_listening = log[: log.index("Uvicorn running on")]
    roots = ", ".join(str(tmp_path / name) for name in ("show", "data", "absent"))
    for line in [
        "WARNING api: DD_MODEL_DIR is not a setting of this server and is ignored "
        "(did you mean DD_MODELS_DIR?)",
        f"WARNING api: DD_ALLOWED_ROOTS: {tmp_path / 'absent'} is not a folder",
        "INFO api: deferred-diffusion ",
        "INFO api: devices: cpu\n",
        f"INFO api: data dir: {tmp_path / 'data'}\n",
        f"INFO api: models dir: {tiny}\n",
        f"INFO api: allowed roots: {roots}\n",
        f"INFO api: path map: P:/elsewhere -> {tmp_path / 'elsewhere'}\n",
        "INFO api: auth: off (no DD_API_KEYS)\n",
        "INFO api: downloads: off (DD_ALLOW_DOWNLOADS=false)\n",
        "WARNING api: serving TINY RANDOM WEIGHTS for sd1.5, sdxl,",
        f"INFO api: web page: {server.url}/\n",
        f"INFO api: API docs: {server.url}/docs\n",
    ]:
        assert before_listening.count(line) == 1, (line, log)
    started = f"INFO api.jobs: job {job['id']} started: images sd1.5 on cpu after "
    ended = rf"INFO api\.jobs: job {job['id']} succeeded: images sd1\.5 on cpu in [\d.]+ s "
    assert log.count(started) == 1, log
    assert re.search(ended + r"\(load_s [\d.]+, inference_s [\d.]+, write_s [\d.]+\)\n", log), log
    for noise in ("it/s", "%|", "\r", "Warning", "warnings.warn", "Traceback"):
        assert noise not in log, (noise, log)


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
    assert server.process is not None
    assert f"pid {server.process.pid}" in second.stderr
    assert "in use by another deferred-diffusion server" in second.stderr
    done = http.get(f"/api/jobs/{running['id']}?wait=120").json()
    assert done["status"] == "succeeded", done


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server: Server):
    """A body with no Content-Length (chunked) is counted as it arrives: the server answers
    413 once it passes the JSON limit and reads no more, so the client stops sending."""
    from api.common.http import MAX_JSON_BYTES

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
