"""``local:qwen-2.5-vl``: the agent on this server's own texts model, through its
OpenAI-compatible /v1 (pydantic-ai's OpenAI chat model over HTTP, the server's API key), in
a real server process. The tiny model's random weights answer noise, never a breakdown, so
what this shows is the path and its clean end: the reference described by a texts job, the
agent's requests arriving at /v1 as texts jobs (the schema in the instructions, the
description in the prompt, DD_AGENT_MAX_TOKENS as their bound), and the job failing as
provider_error when the answer is no breakdown, with the server serving on."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from api.tests.common.test_server_process import Server, free_port
from api.tests.conftest import write_image

pytestmark = pytest.mark.slow

API_KEY = "local-agent-secret"


def test_local_model_through_the_servers_own_v1(tmp_path: Path, tiny_models: Path, workspace: Path):
    scene = write_image(workspace / "storm.png", (32, 32))
    env = {
        name: value for name, value in os.environ.items() if not name.startswith(("DD_", "OPENAI_"))
    } | {
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(tmp_path / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": f'["{workspace}"]',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
        "DD_API_KEYS": f'["{API_KEY}"]',
        "DD_AGENT_MODEL": "local:qwen-2.5-vl",
        "DD_AGENT_MAX_TOKENS": "8",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    server = Server(env, tmp_path / "server.log")
    server.start()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        response = httpx.post(
            f"{server.url}/api/agentic/sequences?wait=300",
            json={"prompt": "A storm at a lighthouse.", "scene_reference_image": str(scene)},
            headers=headers,
            timeout=330,
        )
        job = response.json()
        jobs = httpx.get(f"{server.url}/api/jobs?kind=texts", headers=headers, timeout=30).json()
        health = httpx.get(f"{server.url}/health", timeout=30)
    finally:
        server.stop()
    assert job["model"] == "local:qwen-2.5-vl", job
    assert job["status"] == "failed", job
    assert job["error"]["type"] == "provider_error", job["error"]
    # Eight tokens of noise: cut off at DD_AGENT_MAX_TOKENS, no breakdown in them.
    assert "did not make a breakdown" in job["error"]["message"]
    assert "token limit (8) exceeded" in job["error"]["message"]
    assert health.status_code == 200

    described, asked = sorted(jobs, key=lambda texts: texts["created_at"])
    assert described["request"]["messages"][0]["content"][0]["image"] == str(scene)
    description = described["result"]["response"]
    assert asked["status"] == "succeeded" and asked["request"]["max_tokens"] == 8
    instructions, schema, user = asked["request"]["messages"]
    assert [instructions["role"], schema["role"], user["role"]] == ["system", "system", "user"]
    assert "storyboard artist" in instructions["content"]
    assert "camera_movement" in schema["content"]  # the breakdown's JSON schema
    assert user["content"].startswith("A storm at a lighthouse.")
    assert f"The scene reference image shows: {description}" in user["content"]
