"""Webhooks (issue 16, point 5): a finished job POSTed to its callback_url, signed, retried
after a failure; a host outside DD_CALLBACK_HOSTS refused at submit with nothing queued."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from api.common.webhooks import SECRET_FILE, SIGNATURE_HEADER, WebhookSender, signature
from api.tests.conftest import assert_rejected, image_request


class Receiver(ThreadingHTTPServer):
    """A local webhook receiver: answers 500 to its first ``fail_first`` calls, then 200;
    keeps every call (headers and body)."""

    def __init__(self, fail_first: int) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.fail_first = fail_first
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/done"

    def wait_for(self, count: int, seconds: float = 60.0) -> None:
        with self.got:
            assert self.got.wait_for(lambda: len(self.calls) >= count, seconds), self.calls


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.got:
            self.server.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            failing = len(self.server.calls) <= self.server.fail_first
            self.server.got.notify_all()
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_finished_job_is_posted_signed_and_retried(
    make_client, workspace: Path, tmp_path: Path, receiver: Receiver, monkeypatch
):
    monkeypatch.setattr(WebhookSender, "RETRY_SECONDS", 0.2)
    client = make_client(callback_hosts=["127.0.0.1"])
    body = image_request(workspace, "text_to_image", model="sd1.5", callback_url=receiver.url)
    response = client.post("/api/images?wait=120", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded"
    assert job["request"]["callback_url"] == receiver.url

    receiver.wait_for(2)  # the first answered 500: tried again
    secret = (tmp_path / "data" / SECRET_FILE).read_bytes().strip()
    for attempt, (headers, payload) in enumerate(receiver.calls[:2], start=1):
        expected = "sha256=" + hmac.new(secret, payload, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
        assert headers["content-type"] == "application/json"
        assert headers["x-dd-job-id"] == job["id"]
        assert headers["x-dd-attempt"] == str(attempt)
        sent = json.loads(payload)
        assert sent["id"] == job["id"] and sent["status"] == "succeeded"
        assert sent["request"] == job["request"]
        # The job as GET /api/jobs/{id} answers it: its output's link signed, and it opens.
        url = sent["result"]["images"][0]["url"]
        assert "sig=" in url
        assert client.get(url).content == client.get(job["result"]["images"][0]["url"]).content
    # Once answered 2xx it is not sent again (the sender looks again when a job changes).
    client.post(
        "/api/images?wait=120", json=image_request(workspace, "text_to_image", model="sd1.5")
    )
    time.sleep(1.0)
    assert len(receiver.calls) == 2
    with sqlite3.connect(tmp_path / "data" / "webhooks.sqlite3") as db:
        rows = db.execute("SELECT job_id, attempts, delivered_at, last_error FROM webhooks")
        ((job_id, attempts, delivered_at, last_error),) = rows.fetchall()
    assert (job_id, attempts, last_error) == (job["id"], 2, None) and delivered_at is not None


def test_a_callback_to_a_host_not_allowed_is_refused(
    make_client, workspace: Path, tmp_path: Path, receiver: Receiver
):
    client = make_client(callback_hosts=["pipeline.studio.local"])
    body = image_request(workspace, "text_to_image", model="sd1.5", callback_url=receiver.url)
    error = assert_rejected(client, tmp_path, body, 422, "callback_url", "DD_CALLBACK_HOSTS")
    assert "'127.0.0.1' is not one of" in error["message"]
    body["callback_url"] = "ftp://pipeline.studio.local/x"
    response = client.post("/api/images", json=body)
    assert response.status_code == 422
    assert "callback_url" in response.text
    assert client.get("/api/jobs").json() == []
    assert receiver.calls == []


def test_webhooks_are_off_by_default(client, workspace: Path, tmp_path: Path, receiver: Receiver):
    body = image_request(workspace, "text_to_image", model="sd1.5", callback_url=receiver.url)
    error = assert_rejected(client, tmp_path, body, 422, "callback_url", "webhooks are off")
    assert error["type"] == "invalid_field"


def test_every_domain_documents_callback_url(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    requests = [name for name in ("VideoRequest", "TextRequest", "SequenceRequest")]
    requests += [name for name in schemas if name.endswith("Request") and "Image" in name]
    for name in requests:
        assert "callback_url" in schemas[name]["properties"], name


REDIS_URL = "redis://127.0.0.1:6379/5"  # this test's own database, emptied around it


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_webhooks_on_the_celery_engine(
    make_client,
    monkeypatch,
    workspace: Path,
    tmp_path: Path,
    receiver: Receiver,
    redis_db: redis.Redis,
):
    """With DD_BROKER_URL the API server sends them too: a job cancelled while queued (no
    worker runs here) is POSTed; a refused host leaves nothing in Redis."""
    monkeypatch.setattr(WebhookSender, "RETRY_SECONDS", 0.2)
    client = make_client(broker_url=REDIS_URL, callback_hosts=["127.0.0.1"])
    refused = image_request(workspace, "text_to_image", model="sd1.5")
    refused["callback_url"] = "http://elsewhere.example/hook"
    response = client.post("/api/images", json=refused)
    assert response.status_code == 422 and response.json()["error"]["field"] == "callback_url"
    assert redis_db.dbsize() == 0

    body = image_request(workspace, "text_to_image", model="sd1.5", callback_url=receiver.url)
    job = client.post("/api/images", json=body).json()
    assert job["status"] == "queued"
    assert client.delete(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"
    receiver.wait_for(2)  # answered 500 first, then delivered
    secret = (tmp_path / "data" / SECRET_FILE).read_bytes().strip()
    headers, payload = receiver.calls[1]
    assert headers[SIGNATURE_HEADER.lower()] == signature(secret, payload)
    assert json.loads(payload)["status"] == "cancelled"
