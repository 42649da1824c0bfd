"""What every request model inherits (api.common.schemas.RequestModel), and a job store
that reads any text it holds."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import Field, ValidationError

from api.common.schemas import Prompt, RequestModel, replace_invalid_text


class Part(RequestModel):  # a request of no domain at all: the base alone does the work
    text: str
    tags: list[str] = Field([], max_length=3)


class Message(RequestModel):
    prompt: Prompt = ""
    parts: list[Part] = []
    options: dict[str, str] = {}


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"prompt": "x\ud800y"}, ("prompt",)),
        ({"parts": [{"text": "ok"}, {"text": "\udfff"}]}, ("parts", 1, "text")),
        ({"parts": [{"text": "ok", "tags": ["a", "b\udc00"]}]}, ("parts", 0, "tags", 1)),
        ({"options": {"key": "\ud83d"}}, ("options", "key")),
        ({"options": {"k\ud800": "v"}}, ("options", "k\\ud800")),
        ({"unknown\udc80": 1}, ("unknown\\udc80",)),
    ],
    ids=["field", "nested model", "list item", "dict value", "dict key", "unknown field"],
)
def test_every_string_must_be_valid_unicode(body: dict, location: tuple):
    with pytest.raises(ValidationError) as raised:
        Message.model_validate(body)
    [error] = raised.value.errors()
    assert error["type"] == "invalid_unicode" and error["loc"] == location
    assert "lone UTF-16 surrogate" in error["msg"]
    json.dumps(error["msg"]).encode("utf-8")  # the message itself is safe to send


def test_the_base_refuses_unknown_fields_and_keeps_valid_text():
    with pytest.raises(ValidationError) as raised:
        Message.model_validate({"promt": "x"})
    assert raised.value.errors()[0]["type"] == "extra_forbidden"
    # Proper pairs (an emoji is a surrogate pair in JSON) and any other text are fine.
    message = Message.model_validate(json.loads('{"prompt": "\\ud83d\\ude00 caf\\u00e9 \\u4e00"}'))
    assert message.prompt == "😀 café 一"
    with pytest.raises(ValidationError):
        Message.model_validate({"prompt": "x" * 10_001})


def test_replace_invalid_text():
    value = {"a\ud800": ["x\udfffy", {"b": "\ud83d"}], "n": 1, "ok": "😀"}
    assert replace_invalid_text(value) == {
        "a\ufffd": ["x\ufffdy", {"b": "\ufffd"}],
        "n": 1,
        "ok": "😀",
    }


def test_stored_invalid_text_is_listed_and_fetched(client: TestClient, tmp_path: Path):
    """Rows written before requests were checked (a lone surrogate in the request's JSON,
    bytes that are not UTF-8 in a text column) read back with U+FFFD, never a 500."""
    database = tmp_path / "data" / "jobs.sqlite3"
    surrogate, not_utf8 = uuid.uuid4().hex, uuid.uuid4().hex
    request = {"model": "sd1.5", "prompt": "x\ud800y"}  # json.dumps escapes it: "x\ud800y"
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO jobs (id, kind, model, status, request, result, error, created_at,"
            " finished_at) VALUES (?, 'images', 'sd1.5', 'failed', ?, NULL, ?, ?, ?)",
            (
                surrogate,
                json.dumps(request),
                json.dumps({"type": "internal_error", "message": "bad \udfff"}),
                "2026-01-01T00:00:00.000+00:00",
                "2026-01-01T00:00:01.000+00:00",
            ),
        )
        db.execute(
            "INSERT INTO jobs (id, kind, model, status, request, created_at, finished_at)"
            " VALUES (?, 'images', CAST(X'7364ff312e35' AS TEXT), 'cancelled', ?, ?, ?)",
            (
                not_utf8,
                json.dumps({"model": "sd1.5"}),
                "2026-01-01T00:00:02.000+00:00",
                "2026-01-01T00:00:03.000+00:00",
            ),
        )
    one = client.get(f"/api/jobs/{surrogate}")
    assert one.status_code == 200, one.text
    assert one.json()["request"]["prompt"] == "x\ufffdy"
    assert one.json()["error"]["message"] == "bad \ufffd"
    other = client.get(f"/api/jobs/{not_utf8}")
    assert other.status_code == 200 and other.json()["model"] == "sd\ufffd1.5"
    listed = client.get("/api/jobs")
    assert listed.status_code == 200
    assert [job["id"] for job in listed.json()] == [not_utf8, surrogate]
    assert client.get("/api/jobs?status=failed").json()[0]["request"]["prompt"] == "x\ufffdy"
