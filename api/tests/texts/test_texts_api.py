"""Texts through HTTP on the tiny Qwen2.5-VL: images (by path and inline), a video, a
conversation continued from its chain_of_thought, same seed → same answer, the refusals,
progress carrying the text so far, and the contract every domain keeps."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.tests.conftest import app_state, files_under, write_image
from api.tests.contract import DomainContract
from api.tests.texts.conftest import write_video

MODEL = "qwen-2.5-vl"


def ask(workspace: Path, **extra: Any) -> dict[str, Any]:
    plate = write_image(workspace / "plate.png", (64, 48))
    write_image(workspace / "p.png", (32, 32))  # a picture where a video is asked for
    return {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(plate)},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ],
        "seed": 1,
        "max_tokens": 12,
    } | extra


def run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/texts?wait=120", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    return job


def test_describe_an_image_by_path_and_inline(client: TestClient, workspace: Path):
    by_path = run(client, ask(workspace))
    result = by_path["result"]
    assert result["response"] and result["usage"]["completion_tokens"] <= 12
    assert result["usage"]["prompt_tokens"] > 10 and result["tiny_weights"] is True
    assert result["chain_of_thought"][-1] == {"role": "assistant", "content": result["response"]}
    data = base64.b64encode((workspace / "plate.png").read_bytes()).decode()
    inline = ask(workspace)
    inline["messages"][0]["content"][0]["image"] = f"data:image/png;base64,{data}"
    saved = run(client, inline)
    assert saved["result"]["response"] == result["response"]  # the same picture, the same seed
    image = saved["request"]["messages"][0]["content"][0]["image"]
    assert not image.startswith("data:") and Path(image).read_bytes() == data_bytes(data)


def data_bytes(data: str) -> bytes:
    return base64.b64decode(data)


def test_same_seed_same_answer(client: TestClient, workspace: Path):
    body = ask(workspace, temperature=1.0, max_tokens=8)
    first = run(client, body)["result"]["response"]
    assert run(client, body)["result"]["response"] == first
    answers = {run(client, body | {"seed": seed})["result"]["response"] for seed in range(2, 6)}
    assert answers - {first}  # other seeds, other answers


def test_a_conversation_continues_from_its_chain_of_thought(client: TestClient, workspace: Path):
    first = run(client, ask(workspace))["result"]
    history = first["chain_of_thought"]
    follow_up = history + [{"role": "user", "content": "And its colours?"}]
    second = run(client, {"model": MODEL, "messages": follow_up, "seed": 2, "max_tokens": 8})
    result = second["result"]
    assert result["chain_of_thought"][: len(follow_up)] == follow_up
    assert result["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


def test_a_video_part(client: TestClient, workspace: Path):
    video = write_video(workspace / "clip.mp4", [(255, 0, 0), (0, 0, 255)] * 4, fps=4)
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "system",
                "content": "You describe shots for a VFX supervisor.",
            },
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": str(video)},
                    {"type": "text", "text": "What happens?"},
                ],
            },
        ],
        "seed": 3,
        "max_tokens": 6,
    }
    result = run(client, body)["result"]
    assert result["response"] and result["usage"]["prompt_tokens"] > 20


def test_progress_events_carry_the_text_so_far(client: TestClient, workspace: Path):
    job = client.post("/api/texts", json=ask(workspace, max_tokens=10)).json()
    texts = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(": ", 1)[1]
            elif line.startswith("data:") and event == "progress":
                texts.append(json.loads(line[6:])["text"])
            elif line.startswith("data:") and event == "result":
                response = json.loads(line[6:])["response"]
    assert texts and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert response.startswith(texts[-1])


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"model": "qwen"}, 422, "model"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages.0.role"),
        ({"temperature": 2.5}, 422, "temperature"),
        ({"max_tokens": 0}, 422, "max_tokens"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "image": "/etc/x.png"}]}]},
            403,
            "messages.0.content.0.image",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "image": "WS/no.png"}]}]},
            422,
            "messages.0.content.0.image",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "video", "video": "WS/plate.png"}]}
                ]
            },
            422,
            "messages.0.content.0.video",
        ),
    ],
)
def test_refused_at_submit(
    client: TestClient, workspace: Path, tmp_path: Path, change: dict, status: int, field: str
):
    body = json.loads(json.dumps(ask(workspace) | change).replace("WS", str(workspace)))
    before = files_under(tmp_path)
    response = client.post("/api/texts?wait=5", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert client.get("/api/jobs").json() == [] and files_under(tmp_path) == before


class TestTextsKeepTheContract(DomainContract):
    kind = "texts"
    writes_files = False

    def quick(self, workspace: Path) -> dict[str, Any]:
        return ask(workspace)

    def slow(self, workspace: Path) -> dict[str, Any]:
        # seed 5 at temperature 1 runs to its limit on the tiny weights (no end token early)
        return ask(workspace, max_tokens=2000, temperature=1.0, seed=5)

    def refused(self, workspace: Path) -> tuple[dict[str, Any], int, str]:
        return ask(workspace, temperature=3), 422, "temperature"


def test_another_domain_asks_for_a_description(client: TestClient, workspace: Path):
    """describe_image, the texts domain's public call (the agent's tool): a texts job of its
    own, run on the devices' queue and waited for, from another thread."""
    import threading

    from api.texts.service import describe_image

    plate = str(write_image(workspace / "plate.png", (64, 48)))
    services = app_state(client).services
    answers: list[str] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            describe_image(services, plate, "What is it?", lambda: None, max_tokens=6)
        )
    )
    thread.start()
    thread.join(120)
    [job] = client.get("/api/jobs?kind=texts").json()
    assert answers == [job["result"]["response"]] and job["status"] == "succeeded"
