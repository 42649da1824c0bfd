"""The agent through HTTP: pydantic-ai's OpenAI chat model against a local fake LLM
speaking OpenAI's chat completions (tool calls included), the reference images described by
the tiny texts model (a texts job each), the breakdown and its built prompts, the
refinement turn carrying the history, provider failures, the refusals, cancel, and the
contract every domain keeps."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.agentic.prompts import with_prompts
from api.agentic.schemas import AgentUsage, Breakdown
from api.tests.agentic.breakdowns import breakdown
from api.tests.agentic.fake_llm import KEY, FakeLLM, serving
from api.tests.conftest import app_state, assert_nothing_happened, files_under, write_image
from api.tests.contract import DomainContract

ROUTE = "/api/agentic/sequences"


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with serving() as server:
        yield server


@pytest.fixture
def client(llm: FakeLLM, make_client) -> TestClient:
    return make_client(openai_api_key=KEY, openai_base_url=llm.base_url)


def story(**extra: Any) -> dict[str, Any]:
    return {"prompt": "A lighthouse keeper fights off a smuggler during a storm."} | extra


def submit(client: TestClient, body: dict[str, Any], wait: float = 120) -> dict[str, Any]:
    response = client.post(f"{ROUTE}?wait={wait}", json=body)
    assert response.status_code in (200, 202), response.text
    return response.json()


def texts_jobs(client: TestClient) -> list[dict[str, Any]]:
    return [job for job in client.get("/api/jobs").json() if job["kind"] == "texts"]


def tool_messages(body: dict[str, Any]) -> dict[str, str]:
    """The tool answers a request carries, by the name of the tool called."""
    names = {
        call["id"]: call["function"]["name"]
        for message in body["messages"]
        for call in message.get("tool_calls") or []
    }
    return {
        names[message["tool_call_id"]]: message["content"]
        for message in body["messages"]
        if message["role"] == "tool"
    }


def test_a_breakdown_with_references_described_by_the_texts_model(
    client: TestClient, llm: FakeLLM, workspace: Path
):
    scene = write_image(workspace / "refs" / "storm.png", (48, 32), seed=1)
    face = write_image(workspace / "refs" / "keeper.png", (32, 32), seed=2)
    inline = "data:image/png;base64," + base64.b64encode(face.read_bytes()).decode()
    job = submit(
        client,
        story(scene_reference_image=str(scene), protagonist_reference_image=inline),
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["model"] == "openai:gpt-4o-mini" and job["worker"] == "runner-external"
    assert job["request"]["model"] == "openai:gpt-4o-mini"
    saved = job["request"]["protagonist_reference_image"]
    assert not saved.startswith("data:") and Path(saved).read_bytes() == face.read_bytes()

    # Each reference: one texts job of its own, on the devices' runner, its answer fed back.
    described = texts_jobs(client)
    assert len(described) == 2
    assert {job["worker"] for job in described} == {"runner-cpu"}
    images = {d["request"]["messages"][0]["content"][0]["image"]: d for d in described}
    assert set(images) == {str(scene), saved}
    first, second, *rest = llm.received
    assert rest == []
    assert first["model"] == "gpt-4o-mini"
    assert {tool["function"]["name"] for tool in first["tools"]} == {
        "describe_scene_reference",
        "describe_protagonist_reference",
        "final_result",
    }
    assert tool_messages(second) == {
        "describe_scene_reference": images[str(scene)]["result"]["response"],
        "describe_protagonist_reference": images[saved]["result"]["response"],
    }
    assert first["max_completion_tokens"] == 4096 or first.get("max_tokens") == 4096

    # The breakdown, and the prompts the server built from it.
    result = job["result"]
    usage = AgentUsage(
        requests=2,
        prompt_tokens=llm.usage["prompt_tokens"],
        completion_tokens=llm.usage["completion_tokens"],
        tool_calls=2,
    )
    expected = with_prompts(Breakdown.model_validate(breakdown(shots=2)), usage)
    assert result == expected.model_dump(mode="json")
    assert result["shots"][0]["image_prompt"].startswith("Low angle, the keeper. Mara,")
    assert set(result) == {"scene", "protagonist", "antagonist", "shots", "usage"}
    assert job["progress"] == {"step": 5, "total": 5, "status": "the breakdown is ready: 2 shots"}


def test_the_refinement_turn_carries_the_first_turns_history(
    client: TestClient, llm: FakeLLM, workspace: Path
):
    scene = write_image(workspace / "storm.png", (32, 32))
    job = submit(
        client,
        story(scene_reference_image=str(scene), refinement_prompt="Add a shot of the smuggler."),
    )
    assert job["status"] == "succeeded", job["error"]
    assert len(job["result"]["shots"]) == 3  # the revision: the LLM saw both user prompts
    assert len(texts_jobs(client)) == 1  # described once, for both turns
    first_turn_end, refinement = llm.received[-2], llm.received[-1]
    assert len(llm.received) == 3 and job["result"]["usage"]["requests"] == 3
    # The refinement request holds the first turn's whole conversation, then the note.
    history = refinement["messages"]
    assert history[: len(first_turn_end["messages"])] == first_turn_end["messages"]
    assert any(
        call["function"]["name"] == "final_result"
        for message in history
        for call in message.get("tool_calls") or []
    )
    assert history[-1] == {"role": "user", "content": "Add a shot of the smuggler."}
    assert [m["content"] for m in history if m["role"] == "user"][0].startswith(
        "A lighthouse keeper fights off a smuggler"
    )


def test_the_providers_failure_fails_the_job(client: TestClient, llm: FakeLLM):
    llm.error = (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
    )
    job = submit(client, story())
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert job["error"]["message"] == (
        f"the LLM gpt-4o-mini at {llm.base_url}/ answered HTTP 400: "
        "This model's maximum context length is 8 tokens. (context_length_exceeded)"
    )
    assert client.get("/health").status_code == 200  # the server keeps serving


def test_a_wrong_key_fails_the_job_with_the_providers_message(make_client, llm: FakeLLM):
    client = make_client(openai_api_key="sk-wrong", openai_base_url=llm.base_url)
    job = submit(client, story())
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert "Incorrect API key provided" in job["error"]["message"]


def test_no_connection_to_the_llm_fails_the_job(make_client):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    client = make_client(openai_api_key=KEY, openai_base_url=url)
    job = submit(client, story())
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert job["error"]["message"].startswith(f"could not reach the LLM gpt-4o-mini at {url}/")


def test_a_reference_gone_before_its_description_fails_the_job(
    client: TestClient, llm: FakeLLM, workspace: Path
):
    scene = write_image(workspace / "storm.png", (32, 32))
    llm.hold.clear()
    job = client.post(ROUTE, json=story(scene_reference_image=str(scene))).json()
    assert llm.arrived.wait(60)
    scene.unlink()  # while the LLM thinks: its tool call then finds no file
    llm.hold.set()
    done = client.get(f"/api/jobs/{job['id']}?wait=60").json()
    assert done["status"] == "failed" and done["error"]["type"] == "invalid_input"
    message = done["error"]["message"]
    assert message.startswith("scene_reference_image: ") and str(scene) in message, message
    assert texts_jobs(client) == []  # refused before a texts job was made


def test_answers_that_never_fit_the_breakdown_fail_as_provider_error(
    client: TestClient, llm: FakeLLM
):
    llm.answer = {"scene": "a storm", "shots": []}
    job = submit(client, story())
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert "did not make a breakdown" in job["error"]["message"]
    assert len(llm.received) == 2  # the LLM was told what was wrong, once, then given up on
    assert "scene" in json.dumps(llm.received[1]["messages"][-1])


def test_cancel_while_the_llm_thinks(client: TestClient, llm: FakeLLM):
    llm.hold.clear()
    job = client.post(ROUTE, json=story()).json()
    assert llm.arrived.wait(60)
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    done = client.get(f"/api/jobs/{job['id']}?wait=30").json()
    assert done["status"] == "cancelled" and done["result"] is None
    llm.hold.set()


@pytest.mark.parametrize("poll_seconds", [None, 3.0])
def test_cancel_while_a_reference_is_described_cancels_its_texts_job(
    client: TestClient, workspace: Path, poll_seconds: float | None, monkeypatch
):
    """The describe call is a texts job of its own: cancelling the agent cancels it too,
    also when the agent's job has ended before the thread waiting for the description
    looks again (polls 3 s apart: the job's own cancel flag is gone by then)."""
    if poll_seconds is not None:
        monkeypatch.setattr(
            type(app_state(client).engine), "RUN_AND_WAIT_POLL_SECONDS", poll_seconds
        )
    busy = client.post(  # 500 denoising steps keep the devices' runner busy (no early end)
        "/api/images",
        json={
            "model": "sd1.5",
            "prompt": "x",
            "num_inference_steps": 500,
            "max_width": 256,
            "max_height": 256,
        },
    ).json()
    scene = write_image(workspace / "storm.png", (32, 32))
    job = client.post(ROUTE, json=story(scene_reference_image=str(scene))).json()
    deadline = time.monotonic() + 60
    while not texts_jobs(client):  # the describe job, queued behind the busy one
        assert time.monotonic() < deadline, "the agent never asked for a description"
        time.sleep(0.05)
    holding = client.get(f"/api/jobs/{busy['id']}").json()
    assert holding["status"] == "running", holding  # the describe job waits behind it
    progress = client.get(f"/api/jobs/{job['id']}").json()["progress"]
    assert progress["status"] == "describing the scene reference image"
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    assert client.get(f"/api/jobs/{job['id']}?wait=30").json()["status"] == "cancelled"
    [described] = texts_jobs(client)
    assert client.get(f"/api/jobs/{described['id']}?wait=30").json()["status"] == "cancelled"
    client.delete(f"/api/jobs/{busy['id']}")


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"prompt": ""}, 422, "prompt", "at least 1 character"),
        ({"prompt": "   "}, 422, "prompt", "tell the agent the story"),
        (story(model="anthropic:claude"), 422, "model", "unknown provider 'anthropic'"),
        (story(model="gpt-4o-mini"), 422, "model", "names no provider"),
        (story(model="local:qwen-7"), 422, "model", "no texts model 'qwen-7'"),
        (story(scene_reference_image="/etc/passwd"), 403, "scene_reference_image", "allowed"),
        (
            story(antagonist_reference_image="data:image/png;base64,AAAA"),
            422,
            "antagonist_reference_image",
            "",
        ),
        (story(texts_model="qwen-2.5"), 422, "texts_model", "did you mean 'qwen-2.5-vl'"),
        (story(temperature=1), 422, "temperature", ""),
    ],
)
def test_refusals_queue_and_write_nothing(
    client: TestClient,
    tmp_path: Path,
    body: dict[str, Any],
    status: int,
    field: str,
    words: str,
):
    before = files_under(tmp_path)
    response = client.post(f"{ROUTE}?wait=5", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert_nothing_happened(client, tmp_path, before)


def test_no_key_for_the_provider_is_a_422_on_model(make_client, tmp_path: Path):
    client = make_client()  # neither OPENAI_API_KEY nor OPENAI_BASE_URL
    before = files_under(tmp_path)
    response = client.post(ROUTE, json=story())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "model" and "no OPENAI_API_KEY" in error["message"]
    assert_nothing_happened(client, tmp_path, before)
    models = {m["name"]: m for m in client.get("/api/models").json() if m["domain"] == "agentic"}
    assert models["openai:gpt-4o-mini"]["available"] is False
    assert "OPENAI_API_KEY" in models["openai:gpt-4o-mini"]["reason"]
    assert models["local:qwen-2.5-vl"]["available"] is True
    assert models["local:qwen-2.5-vl"]["weights"]["tiny"] is True


class TestSequencesKeepTheContract(DomainContract):
    kind = "agentic"
    writes_files = False

    @pytest.fixture(autouse=True)
    def _llm(self, llm: FakeLLM) -> Iterator[None]:
        self.llm = llm
        yield
        llm.hold.set()

    def submit(self, client: TestClient, body: dict[str, Any], wait: float = 0) -> Any:
        return client.post(f"{ROUTE}?wait={wait}", json=body)

    def quick(self, workspace: Path) -> dict[str, Any]:
        return story()

    def slow(self, workspace: Path) -> dict[str, Any]:
        self.llm.hold.clear()  # the LLM thinks until the test ends
        return story()

    def refused(self, workspace: Path) -> tuple[dict[str, Any], int, str]:
        return story(model="nope:x"), 422, "model"

    def test_submit_and_wait(self, client: TestClient, workspace: Path):
        """As the contract's, but the job runs on the runner of jobs at providers."""
        response = self.submit(client, self.quick(workspace), wait=120)
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded", job["error"]
        assert job["kind"] == "agentic" and job["worker"] == "runner-external"
        assert response.headers["location"] == f"/api/jobs/{job['id']}"
