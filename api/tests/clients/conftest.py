"""The clients' tests: the client package (hda/python) on the path, and one real
``python -m api serve`` process on the tiny models, shared by the session's tests."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.tests.agentic.fake_llm import KEY, FakeLLM, serving
from api.tests.common.test_server_process import REPO, Server, free_port

CLIENT_PACKAGE = REPO / "hda" / "python"
if str(CLIENT_PACKAGE) not in sys.path:
    sys.path.insert(0, str(CLIENT_PACKAGE))


@pytest.fixture(scope="session")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's allowed root: the tests' inputs and outputs."""
    return tmp_path_factory.mktemp("client-show")


@pytest.fixture(scope="session")
def llm() -> Iterator[FakeLLM]:
    """The agent's LLM: a fake speaking OpenAI's chat completions (api/tests/agentic)."""
    with serving() as fake:
        yield fake


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, server_root: Path, llm: FakeLLM
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("client-server")
    env = os.environ | {
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(folder / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": f'["{server_root}", "{folder / "data"}"]',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": llm.base_url,
    }
    for name in ("DD_API_KEYS", "DD_HOST", "DD_PATH_MAP", "DD_SERVER_ADDRESS", "DD_API_KEY"):
        env.pop(name, None)
    server = Server(env, folder / "server.log")
    server.start()
    yield server
    server.stop()


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Until ``check()`` holds (a job running in another thread), at most two minutes."""
    deadline = time.monotonic() + 120
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
