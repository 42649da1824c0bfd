"""The README's curl examples, run verbatim by bash, curl and jq against a real server on the
tiny models, the way a newcomer pastes them: the README's API key, and its allowed root
``/mnt/show`` mapped (``DD_PATH_MAP``) onto a folder of the test holding the plates the
examples name. Only the port differs. gpt-image-1 talks to the fake OpenAI of its tests,
which here also answers the agent's chat completions as the agent's fake LLM does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.tests.agentic.fake_llm import chat_completion
from api.tests.common.test_server_process import REPO, Server, free_port
from api.tests.conftest import write_image, write_mask
from api.tests.images.test_gpt_image import KEY as OPENAI_KEY
from api.tests.images.test_gpt_image import FakeOpenAI
from api.tests.images.test_gpt_image import _Handler as ImagesHandler

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("curl") and shutil.which("jq") and shutil.which("bash")),
        reason="needs bash, curl and jq, as the README's examples do",
    ),
]

API_KEY = "a-long-secret"  # the README's


def readme_examples() -> str:
    """Every bash block of the README's curl section (up to "The Job") that calls the API."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using it with curl") : text.index("### The Job")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return "\n".join(block for block in blocks if "curl" in block or "AUTH=" in block)


def plates(show: Path, cwd: Path) -> None:
    """The files the examples read: plates, masks, references, a depth render."""
    shot = show / "shots" / "sh010"
    for name in ("plate.png", "depth.png"):
        write_image(shot / name, (96, 64))
    write_image(shot / "plate_lo.png", (32, 32))
    for name in ("car_mask.png", "hero_mask.png"):
        write_mask(shot / name, (96, 64))
    for seed, name in enumerate(("look.png", "hero_face.png", "neon_look.png")):
        write_image(show / "ref" / name, (64, 64), seed=seed)
    write_image(cwd / "plate.png", (96, 64))


class OpenAIHandler(ImagesHandler):
    """The images fake's routes, and chat completions (the agent's LLM)."""

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            return super().do_POST()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self._answer(*chat_completion(body, self.headers.get("Authorization"), OPENAI_KEY))


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    server.RequestHandlerClass = OpenAIHandler
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.hold.set()
    server.shutdown()
    server.server_close()


def test_the_readme_curl_examples_run_verbatim(
    tmp_path: Path, tiny_models: Path, openai_fake: FakeOpenAI
):
    show, cwd = tmp_path / "show", tmp_path / "cwd"
    cwd.mkdir()
    plates(show, cwd)
    port = free_port()
    env = {
        name: value for name, value in os.environ.items() if not name.startswith(("DD_", "OPENAI_"))
    } | {
        "DD_DATA_DIR": str(tmp_path / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_API_KEYS": f'["{API_KEY}"]',
        "DD_ALLOWED_ROOTS": f'["{show}"]',
        "DD_PATH_MAP": f'{{"/mnt/show": "{show}"}}',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai_fake.base_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    server = Server(env | {"DD_PORT": str(port)}, tmp_path / "server.log")
    server.start()
    try:
        script = readme_examples().replace("localhost:5000", f"localhost:{port}")
        run = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        jobs = httpx.get(
            f"{server.url}/api/jobs?limit=100",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        ).json()
    finally:
        server.stop()
    submits = len(re.findall(r"/api/(images|videos|texts|agentic/sequences)\b", script))
    described = script.count("_reference_image")  # the agent's: a texts job per reference
    assert len(jobs) == submits + described, run.stdout  # every example was accepted
    for job in jobs:
        if job["model"] == "segment-anything" and job["status"] == "failed":
            # Random weights may find nothing at the README's thresholds: a clear failure.
            assert job["error"]["type"] == "nothing_found"
            continue
        assert job["status"] == "succeeded", job
    for name in ("crate.png", "night.png", "car.png", "depth.exr", "plate_x4.png", "gen.mp4"):
        assert (show / "shots" / "sh010" / name).is_file(), name
    assert (show / "shots" / "sh010" / "frames" / "plate_gen.1001.png").is_file()
    assert (cwd / "out.png").stat().st_size > 0  # the download, by its signed link
    assert '"path": "/mnt/show/shots/sh010/crate.png"' in run.stdout  # mapped back
