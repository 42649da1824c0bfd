"""The OpenAI-compatible face, driven by the official ``openai`` SDK: the models list, a
completion with an image, streaming (equal to the answer without it, at temperature 0),
each call a texts job, and the API keys."""

from __future__ import annotations

import base64
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam

from api.tests.conftest import write_image

KEY = "a-long-secret"


@pytest.fixture
def keyed(make_client) -> TestClient:
    return make_client(api_keys=[KEY])


def sdk(client: TestClient, key: str = KEY) -> openai.OpenAI:
    """The SDK, its HTTP going to the test's server (the ASGI app) instead of the network."""
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0
    )


def image_message(workspace: Path) -> list[ChatCompletionMessageParam]:
    plate = write_image(workspace / "plate.png", (64, 48)).read_bytes()
    url = "data:image/png;base64," + base64.b64encode(plate).decode()
    return [
        {"role": "system", "content": "You describe plates."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        },
    ]


def test_models_are_listed(keyed: TestClient):
    assert [model.id for model in sdk(keyed).models.list()] == ["qwen-2.5-vl"]


def test_a_completion_with_an_image_is_a_texts_job(keyed: TestClient, workspace: Path):
    answer = sdk(keyed).chat.completions.create(
        model="qwen-2.5-vl", messages=image_message(workspace), temperature=0, max_tokens=10
    )
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= 10 and answer.usage.prompt_tokens > 10
    [job] = keyed.get("/api/jobs", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert job["kind"] == "texts" and answer.id == f"chatcmpl-{job['id']}"
    assert job["result"]["response"] == choice.message.content


def test_streaming_equals_the_answer_at_temperature_0(keyed: TestClient, workspace: Path):
    client = sdk(keyed)
    messages = image_message(workspace)
    whole = (
        client.chat.completions.create(
            model="qwen-2.5-vl", messages=messages, temperature=0, max_completion_tokens=12
        )
        .choices[0]
        .message.content
    )
    stream = client.chat.completions.create(
        model="qwen-2.5-vl", messages=messages, temperature=0, max_completion_tokens=12, stream=True
    )
    chunks = list(stream)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_the_api_keys_apply(keyed: TestClient):
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed, key="wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed, key="wrong").chat.completions.create(
            model="qwen-2.5-vl", messages=[{"role": "user", "content": "hi"}]
        )


def test_bad_requests_name_the_field(keyed: TestClient):
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        sdk(keyed).chat.completions.create(
            model="qwen-9", messages=[{"role": "user", "content": "hi"}]
        )
    body = refused.value.body
    assert isinstance(body, dict) and body["field"] == "model"
