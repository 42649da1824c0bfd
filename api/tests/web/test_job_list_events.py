"""GET /api/jobs/events: the job list's Server-Sent Events (what the web page follows),
against a real server process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.tests.common.test_server_process import QUICK, SLOW, Server
from api.tests.web.conftest import KEY

pytestmark = pytest.mark.slow


def events(stream: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs as they arrive; comments (keep-alives) skipped."""
    name = "message"  # SSE: the event of a block without an `event:` line
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


def test_the_list_stream_starts_with_the_jobs_then_follows_every_change(page_server: Server):
    http = httpx.Client(base_url=page_server.url, timeout=60)
    earlier = http.post("/api/images?wait=60", json=QUICK).json()
    seen: list[tuple[str, Any]] = []
    with http.stream("GET", "/api/jobs/events", params={"kind": "images"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        feed = events(stream)
        name, jobs = next(feed)
        assert name == "jobs" and earlier["id"] in [job["id"] for job in jobs]
        assert all(job["kind"] == "images" for job in jobs)
        busy = http.post("/api/images", json=SLOW).json()  # holds the runner: the next waits
        # long enough to change over several of the feed's intervals: progress events too
        job = http.post("/api/images", json=QUICK | {"num_inference_steps": 200}).json()
        cancelled = False
        for name, data in feed:
            seen.append((name, data))
            # The queue event can name a job before its own "job" event has come (both
            # changed within one interval): cancel the busy one once both were seen.
            announced = any(n == "job" and d["id"] == job["id"] for n, d in seen)
            next_up = any(n == "queue" and d.get(job["id"]) == 1 for n, d in seen)
            if announced and next_up and not cancelled:
                http.delete(f"/api/jobs/{busy['id']}")
                cancelled = True
            if name == "job" and data["id"] == job["id"] and data["status"] == "succeeded":
                break
    mine = [(name, data) for name, data in seen if data.get("id") == job["id"]]
    statuses = [data["status"] for name, data in mine if name == "job"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    steps = [data["progress"]["step"] for name, data in mine if name == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] <= mine[-1][1]["progress"]["total"]
    busy_statuses = [
        data["status"] for name, data in seen if name == "job" and data["id"] == busy["id"]
    ]
    assert busy_statuses[-1] == "cancelled"
    finished = mine[-1][1]
    url = finished["result"]["images"][0]["url"]
    assert "sig=" in url  # signed: the page shows it without sending the key
    assert http.get(url).content == Path(finished["result"]["images"][0]["path"]).read_bytes()
    assert {} in [data for name, data in seen if name == "queue"]  # in the end none waits


def test_the_list_stream_refuses_bad_filters_and_a_missing_key(
    page_server: Server, keyed_server: Server
):
    bad = httpx.get(f"{page_server.url}/api/jobs/events", params={"status": "exploded"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"
    refused = httpx.get(f"{keyed_server.url}/api/jobs/events")
    assert refused.status_code == 401 and refused.json()["error"]["field"] == "Authorization"
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("GET", f"{keyed_server.url}/api/jobs/events", headers=headers) as stream:
        assert stream.status_code == 200
        assert next(events(stream))[0] == "jobs"


def test_a_feed_hears_of_every_job_and_whether_only_its_progress_changed():
    from api.common.jobs.engine import JobEvents

    events = JobEvents()

    async def follow() -> None:
        events.bind(asyncio.get_running_loop())
        events.publish("before")  # no feed yet: nobody hears of it
        with events.watch_all() as feed:
            await asyncio.to_thread(events.publish, "a", True)  # from a runner thread
            await asyncio.to_thread(events.publish, "b")
            await asyncio.to_thread(events.publish, "c")
            await asyncio.to_thread(events.publish, "c", True)  # a status change stays one
            await asyncio.wait_for(feed.changed.wait(), 5)
            await asyncio.sleep(0.05)  # the loop runs the wake-ups scheduled from the threads
            assert feed.take() == {"a": True, "b": False, "c": False}
            assert not feed.changed.is_set() and feed.take() == {}
            events.publish("a", True)
            await asyncio.wait_for(feed.changed.wait(), 5)
            assert feed.take() == {"a": True}

    asyncio.run(follow())
