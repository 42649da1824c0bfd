"""Priorities on the embedded engine, through HTTP: a job's ``priority`` orders its queue
(higher first, then first come), ``queue_position`` says that order, an API key's
``max_priority`` bounds it; and a job store from before priorities opens."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from api.common.jobs.store import JobStore
from api.tests.common.test_jobs import QUICK, SLOW, wait_for

# Jobs queued in this order, by name, with their priority (absent: the default, 0)...
PRIORITIES: tuple[tuple[str, dict[str, int]], ...] = (
    ("low", {"priority": -5}),
    ("default", {}),
    ("high", {"priority": 5}),
    ("urgent", {"priority": 10}),
    ("high, later", {"priority": 5}),
)
# ...run in this one: higher first, equal ones first come, first served.
RUNS_IN = ["urgent", "high", "high, later", "default", "low"]


def queue_at_priorities(http: httpx.Client | TestClient, body: dict) -> dict[str, dict]:
    """Queue ``body`` at each of PRIORITIES (behind busy runners or workers): their queue
    positions say RUNS_IN, their requests their priority. The jobs as submitted, by name."""
    submitted = {
        name: http.post("/api/images", json=body | extra).json() for name, extra in PRIORITIES
    }
    jobs = {name: http.get(f"/api/jobs/{job['id']}").json() for name, job in submitted.items()}
    assert {name: job["queue_position"] for name, job in jobs.items()} == {
        name: position for position, name in enumerate(RUNS_IN, start=1)
    }
    assert [jobs[name]["request"]["priority"] for name in RUNS_IN] == [10, 5, 5, 0, -5]
    assert submitted["low"]["queue_position"] == 1  # truthful when it was alone
    return submitted


def test_priorities_reorder_a_queue(client: TestClient):
    busy = client.post("/api/images", json=SLOW).json()  # holds the one runner
    wait_for(client, busy["id"], lambda job: job["status"] == "running")
    submitted = queue_at_priorities(client, QUICK)
    runs_in = list(RUNS_IN)
    # Cancelling one moves those behind it up, and only those.
    assert client.delete(f"/api/jobs/{submitted['high']['id']}").status_code == 200
    runs_in.remove("high")
    positions = {
        name: client.get(f"/api/jobs/{submitted[name]['id']}").json()["queue_position"]
        for name in runs_in
    }
    assert positions == {name: position for position, name in enumerate(runs_in, start=1)}

    client.delete(f"/api/jobs/{busy['id']}")
    done = [client.get(f"/api/jobs/{submitted[name]['id']}?wait=120").json() for name in runs_in]
    assert [job["status"] for job in done] == ["succeeded"] * len(runs_in)
    started = [job["started_at"] for job in done]
    assert started == sorted(started) and len(set(started)) == len(started)


def test_a_rerun_keeps_its_priority_unless_overridden(client: TestClient):
    job = client.post("/api/images?wait=120", json=QUICK | {"priority": 7}).json()
    again = client.post(f"/api/jobs/{job['id']}/rerun").json()
    assert again["request"]["priority"] == 7
    lower = client.post(f"/api/jobs/{job['id']}/rerun", json={"overrides": {"priority": -1}})
    assert lower.json()["request"]["priority"] == -1
    for rerun in (again, lower.json()):
        client.get(f"/api/jobs/{rerun['id']}?wait=120")


def test_priority_out_of_bounds_is_refused(client: TestClient):
    for priority in (11, -11, 2.5, "high"):
        refused = client.post("/api/images", json=QUICK | {"priority": priority})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "priority"
    assert client.get("/api/jobs").json() == []


def test_an_api_keys_max_priority(make_client):
    client = make_client(api_keys=["supervisor", {"key": "farm", "max_priority": 2}])
    farm = {"Authorization": "Bearer farm"}
    supervisor = {"Authorization": "Bearer supervisor"}
    for body in (QUICK | {"priority": 3}, QUICK | {"priority": 10}):
        refused = client.post("/api/images", json=body, headers=farm)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["field"] == "priority" and "max_priority is 2" in error["message"]
    texts = {"model": "qwen-2.5-vl", "messages": [{"role": "user", "content": "hi"}]}
    refused = client.post("/api/texts", json=texts | {"priority": 5}, headers=farm)
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "priority"
    assert client.get("/api/jobs", headers=supervisor).json() == []  # nothing queued

    allowed = [
        client.post("/api/images", json=QUICK | extra, headers=farm)
        for extra in ({}, {"priority": 2}, {"priority": -10})
    ]
    assert [answer.status_code for answer in allowed] == [202] * 3
    urgent = client.post("/api/images", json=QUICK | {"priority": 10}, headers=supervisor)
    assert urgent.status_code == 202
    # A re-run asks for the priority it had: more than the farm's key allows.
    rerun = f"/api/jobs/{urgent.json()['id']}/rerun"
    refused = client.post(rerun, headers=farm)
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "priority"
    refused = client.post(rerun, json={"overrides": {"priority": 5}}, headers=farm)
    assert refused.status_code == 403
    assert refused.json()["error"]["field"] == "overrides.priority"
    lowered = client.post(rerun, json={"overrides": {"priority": 0}}, headers=farm)
    assert lowered.status_code == 202 and lowered.json()["request"]["priority"] == 0
    # So does a re-run of an output, from the request in its metadata.
    done = client.get(f"/api/jobs/{urgent.json()['id']}?wait=120", headers=supervisor).json()
    image = {"image_path": done["result"]["images"][0]["path"]}
    refused = client.post("/api/images/rerun", json=image, headers=farm)
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "priority"
    overrides = {"overrides": {"priority": 3}}
    refused = client.post("/api/images/rerun", json=image | overrides, headers=farm)
    assert refused.status_code == 403
    assert refused.json()["error"]["field"] == "overrides.priority"
    assert len(client.get("/api/jobs", headers=supervisor).json()) == 5
    for job in client.get("/api/jobs", headers=supervisor).json():
        client.delete(f"/api/jobs/{job['id']}", headers=supervisor)


OLD_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    model TEXT NOT NULL, status TEXT NOT NULL, request TEXT NOT NULL, result TEXT,
    error TEXT, progress TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, worker TEXT,
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT
);
"""


def test_a_job_store_from_before_priorities_opens(tmp_path: Path):
    """A jobs.sqlite3 from before queues and priorities: its queued jobs keep their place
    (priority 0), after newer urgent ones."""
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
        for job_id in ("first", "second"):
            old.execute(
                "INSERT INTO jobs (id, kind, model, status, request, created_at)"
                " VALUES (?, 'images', 'sd1.5', 'queued', ?, '2024-01-01T00:00:00+00:00')",
                (job_id, json.dumps({"prompt": job_id})),
            )
    old.close()
    store = JobStore(path)
    try:
        urgent = store.submit("images", "sd1.5", {"prompt": "now", "priority": 3})
        assert urgent.queue_position == 1
        assert [store.get(job_id).queue_position for job_id in ("first", "second")] == [2, 3]
        assert store.queue_positions() == {urgent.id: 1, "first": 2, "second": 3}
        claimed = [store.claim_next("runner") for _ in range(4)]
        assert [job.id if job else None for job in claimed] == [urgent.id, "first", "second", None]
    finally:
        store.close()
