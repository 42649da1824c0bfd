"""The web page's tests: real ``python -m api serve`` processes on the tiny models (one
without API keys, one with), shared by this folder's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.tests.common.test_server_process import Server, free_port

KEY = "page-test-key"


def start_server(folder: Path, tiny_models: Path, api_keys: list[str] | None = None) -> Server:
    show = folder / "show"
    show.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(folder / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": f'["{show}", "{folder / "data"}"]',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("DD_API_KEYS", "DD_HOST", "DD_PATH_MAP", "DD_LOG_LEVEL"):
        env.pop(name, None)
    if api_keys:
        env["DD_API_KEYS"] = str(api_keys).replace("'", '"')
    server = Server(env, folder / "server.log")
    server.start()
    return server


@pytest.fixture(scope="package")
def page_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Server]:
    """A server without API keys."""
    server = start_server(tmp_path_factory.mktemp("page-server"), tiny_models)
    yield server
    server.stop()


@pytest.fixture(scope="package")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Server]:
    """A server with DD_API_KEYS set (one key: KEY)."""
    server = start_server(tmp_path_factory.mktemp("keyed-server"), tiny_models, [KEY])
    yield server
    server.stop()
