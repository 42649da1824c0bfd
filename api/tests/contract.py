"""The contract every domain keeps, as tests each domain's test module inherits: a submit
that waits succeeds and its files are served at their URLs, a refusal writes and queues
nothing, a running job is cancelled at its next step, and its events stream to the end.

A domain's tests subclass ``DomainContract`` and say how to make a quick job, a slow one
and a refused one of theirs (``quick``, ``slow``, ``refused``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.tests.conftest import app_state, assert_nothing_happened, files_under


class DomainContract:
    kind: str  # the domain's kind: its route is /api/<kind>
    writes_files = True  # whether its results name files (served at /api/files/...)

    def quick(self, workspace: Path) -> dict[str, Any]:
        """A request that succeeds in a second or two on the tiny models."""
        raise NotImplementedError

    def slow(self, workspace: Path) -> dict[str, Any]:
        """A request that reports progress for long enough to be cancelled while running."""
        raise NotImplementedError

    def refused(self, workspace: Path) -> tuple[dict[str, Any], int, str]:
        """A request refused at submit: (body, status, field)."""
        raise NotImplementedError

    def submit(self, client: TestClient, body: dict[str, Any], wait: float = 0) -> Any:
        return client.post(f"/api/{self.kind}?wait={wait}", json=body)

    def test_submit_and_wait(self, client: TestClient, workspace: Path):
        response = self.submit(client, self.quick(workspace), wait=120)
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded", job["error"]
        assert job["kind"] == self.kind and job["worker"] == "runner-cpu"
        assert response.headers["location"] == f"/api/jobs/{job['id']}"
        assert client.get(f"/api/jobs/{job['id']}").json()["result"] is not None

    def test_outputs_are_served_at_their_urls(self, client: TestClient, workspace: Path):
        if not self.writes_files:
            return
        job = self.submit(client, self.quick(workspace), wait=120).json()
        domain = app_state(client).domains[self.kind]
        outputs = domain.output_files(job["result"])
        assert outputs
        services = app_state(client).services
        for output in outputs:
            served = client.get(output.url)
            assert served.status_code == 200, output
            path = Path(services.paths.to_server(output.path))
            assert served.content == path.read_bytes()

    def test_a_refusal_writes_and_queues_nothing(
        self, client: TestClient, workspace: Path, tmp_path: Path
    ):
        body, status, field = self.refused(workspace)
        before = files_under(tmp_path)
        response = self.submit(client, body, wait=5)
        assert response.status_code == status, response.text
        assert response.json()["error"]["field"] == field
        assert_nothing_happened(client, tmp_path, before)

    def test_cancel_mid_run(self, client: TestClient, workspace: Path):
        job = self.submit(client, self.slow(workspace)).json()
        deadline = time.monotonic() + 60
        while (client.get(f"/api/jobs/{job['id']}").json()["progress"] or {}).get("step", 0) < 1:
            assert time.monotonic() < deadline, "the slow job never reported progress"
            time.sleep(0.05)
        assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
        done = client.get(f"/api/jobs/{job['id']}?wait=30").json()
        assert done["status"] == "cancelled" and done["result"] is None
        assert done["progress"]["step"] < done["progress"]["total"]

    def test_events_stream_to_the_result(self, client: TestClient, workspace: Path):
        job = self.submit(client, self.quick(workspace)).json()
        with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event:")]
        assert events[0] == "event: status"
        assert "event: progress" in events
        assert events[-1] == "event: result"
