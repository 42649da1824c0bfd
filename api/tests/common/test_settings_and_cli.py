"""Settings messages that say how to fix them, start-up warnings, and the command line."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from api.common.settings import (
    SettingsError,
    environment_name,
    load_settings,
    start_up_warnings,
)
from api.domains import Settings

REPO = Path(__file__).parents[3]


def python_m_api(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


JSON_SETTINGS = {
    "DD_ALLOWED_ROOTS": ["/mnt/show", '"/mnt/show"', '{"a": 1}'],
    "DD_PATH_MAP": ["Z:/show=/mnt/show", '["Z:/show", "/mnt/show"]'],
    "DD_API_KEYS": ["a-long-secret", '"a-long-secret"'],
    "DD_WARMUP": ["sdxl", '{"sdxl": true}'],
}


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in JSON_SETTINGS.items() for value in values],
)
def test_json_settings_errors_show_a_valid_example(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
):
    monkeypatch.setenv("DD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name) as raised:
        load_settings(Settings)
    example = re.search(rf"e\.g\. {name}='(.+)'$", str(raised.value), re.MULTILINE)
    assert example, str(raised.value)
    if name == "DD_ALLOWED_ROOTS":
        for root in ("/mnt/show", "/data"):
            assert root in example.group(1)
        return  # the example's folders need not exist here
    monkeypatch.setenv(name, example.group(1))  # the example itself is a valid setting
    assert load_settings(Settings)


def test_unknown_variables_and_missing_roots_are_warnings(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, allowed_roots=[tmp_path, tmp_path / "not-mounted"])
    environ = {
        "DD_MODEL_DIR": "/opt/models",  # typo of DD_MODELS_DIR
        "dd_warm_up": "[]",
        "DD_MODELS_DIR": "/opt/models",  # a setting
        "DD_SERVER_ADDRESS": "http://gpu-box:5000",  # the clients' variable
        "HOME": "/home/x",
    }
    warnings = start_up_warnings(settings, environ)
    assert len(warnings) == 3, warnings
    assert "DD_MODEL_DIR is not a setting" in warnings[0]
    assert "did you mean DD_MODELS_DIR?" in warnings[0]
    assert "dd_warm_up is not a setting" in warnings[1]
    assert "did you mean DD_WARMUP?" in warnings[1]
    assert f"DD_ALLOWED_ROOTS: {tmp_path / 'not-mounted'} is not a folder" in warnings[2]
    assert start_up_warnings(Settings(data_dir=tmp_path), {"DD_PORT": "1"}) == []


def test_every_setting_is_described():
    assert all(info.description for info in Settings.model_fields.values())


def test_serve_help_lists_every_setting():
    done = python_m_api("serve", "--help")
    assert done.returncode == 0, done.stderr
    assert "--host" in done.stdout and "--port" in done.stdout
    text = " ".join(done.stdout.split())  # the help wraps long lines
    for name, info in Settings.model_fields.items():
        assert environment_name(name, info) in done.stdout
        assert info.description, name
        assert " ".join(info.description.split()) in text
    assert "OPENAI_API_KEY" in text  # a provider's key, under its usual name
    assert "DD_PORT port to listen on [default: 5000]" in text
    assert "DD_PATH_MAP" in text and "[default: {}]" in text
    assert "DD_ALLOW_DOWNLOADS" in text and "[default: true]" in text


def test_serve_flags_are_checked_like_the_variables(tmp_path: Path):
    env = os.environ | {"DD_DATA_DIR": str(tmp_path / "data"), "DD_HOST": "127.0.0.1"}
    for name in ("DD_API_KEYS", "DD_ALLOW_NO_AUTH"):
        env.pop(name, None)
    open_bind = python_m_api("serve", "--host", "0.0.0.0", env=env)
    assert open_bind.returncode == 2
    assert "listening on 0.0.0.0" in open_bind.stderr
    assert "DD_API_KEYS" in open_bind.stderr and "DD_ALLOW_NO_AUTH" in open_bind.stderr
    bad_port = python_m_api("serve", "--port", "70000", env=env)
    assert bad_port.returncode == 2
    assert "--port: Input should be less than or equal to 65535" in bad_port.stderr


def test_tiny_models_wrong_name_is_one_line(tmp_path: Path):
    done = python_m_api("tiny-models", str(tmp_path / "tiny"), "--only", "sd1.5", "flux")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "no tiny model 'flux' (did you mean 'flux-schnell'" in lines[0]
    assert "the names are: sd1.5, sdxl," in lines[0] and "segment-anything" in lines[0]
    assert not (tmp_path / "tiny").exists()  # nothing written, not even sd1.5


def test_start_up_summary_names_auth_never_the_keys(make_settings, caplog, monkeypatch):
    from api.common.startup import docs_url, log_start_up, server_url
    from api.main import create_app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = make_settings(api_keys=["s3cret-key", "other-key"], allow_downloads=True)
    app = create_app(settings, devices=["cpu"])
    with caplog.at_level(logging.INFO, logger="api"):
        log_start_up(app)
    app.state.engine.store.close()
    assert "auth: on (2 API key(s))" in caplog.text
    assert "path map: none" in caplog.text
    assert "downloads: off (HF_HUB_OFFLINE)" in caplog.text
    assert "s3cret-key" not in caplog.text and "other-key" not in caplog.text
    assert docs_url("::1", 5000) == "http://[::1]:5000/docs"
    assert docs_url("0.0.0.0", 80) == f"http://{socket.gethostname()}:80/docs"
    assert server_url("::1", 5000) == "http://[::1]:5000"
