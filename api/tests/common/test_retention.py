"""Retention (issue 16, point 7): jobs that ended more than DD_RETENTION_DAYS ago are
removed with the outputs the server wrote under its data dir; outputs on the shared roots
stay; /health says how much the data dir holds. Both stores."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.common.jobs.distributed.store import JOBS, RedisJobStore, job_key
from api.common.jobs.schemas import JobStatus
from api.common.jobs.store import DEVICE_QUEUE
from api.main import create_app
from api.tests.conftest import image_request, run_job

REDIS_URL = "redis://127.0.0.1:6379/4"  # this test's own database, emptied around it


def test_old_jobs_go_with_their_data_dir_outputs_and_shared_ones_stay(
    make_settings, workspace: Path, tmp_path: Path
):
    data = tmp_path / "data"
    with TestClient(create_app(make_settings(), devices=["cpu"])) as client:
        in_data_dir = run_job(client, image_request(workspace, "text_to_image", model="sd1.5"))
        shared_path = workspace / "shot" / "beauty.png"
        on_shared_root = run_job(
            client,
            image_request(
                workspace,
                "text_to_image",
                model="sd1.5",
                output_image_path=str(shared_path),
                seed=8,
            ),
        )
        recent = run_job(client, image_request(workspace, "text_to_image", model="sd1.5", seed=9))
        health = client.get("/health").json()
        assert health["data_dir"]["files"] > 0 and health["data_dir"]["bytes"] > 0
    old_output = Path(in_data_dir["result"]["images"][0]["path"])
    recent_output = Path(recent["result"]["images"][0]["path"])
    shared_take = Path(on_shared_root["result"]["images"][0]["take_path"])
    assert old_output.is_relative_to(data / "outputs") and old_output.is_file()
    assert shared_path.is_file() and shared_take.is_file()

    # Age two of them: ended 3 days ago, in the real job database.
    ended = (datetime.now(UTC) - timedelta(days=3)).isoformat(timespec="milliseconds")
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.executemany(
            "UPDATE jobs SET finished_at = ? WHERE id = ?",
            [(ended, in_data_dir["id"]), (ended, on_shared_root["id"])],
        )

    with TestClient(create_app(make_settings(retention_days=2), devices=["cpu"])) as client:
        for _ in range(600):  # the sweep runs in the background as the server starts
            if client.get(f"/api/jobs/{in_data_dir['id']}").status_code == 404:
                break
            time.sleep(0.1)
        assert client.get(f"/api/jobs/{in_data_dir['id']}").status_code == 404
        assert client.get(f"/api/jobs/{on_shared_root['id']}").status_code == 404
        assert client.get(f"/api/jobs/{recent['id']}").json()["status"] == "succeeded"
        assert [job["id"] for job in client.get("/api/jobs").json()] == [recent["id"]]
        usage = client.get("/health").json()["data_dir"]
    # Its output in the data dir is gone (its folder too); the recent job's stays; the
    # files on the shared root stay, the take included.
    assert not old_output.exists() and not old_output.parent.exists()
    assert recent_output.is_file()
    assert shared_path.is_file() and shared_take.is_file()
    assert usage["files"] > 0 and usage["bytes"] > 0


def test_retention_is_off_unless_set(make_settings, workspace: Path, tmp_path: Path):
    with TestClient(create_app(make_settings(), devices=["cpu"])) as client:
        job = run_job(client, image_request(workspace, "text_to_image", model="sd1.5"))
    ended = (datetime.now(UTC) - timedelta(days=3650)).isoformat(timespec="milliseconds")
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET finished_at = ?", (ended,))
    with TestClient(create_app(make_settings(), devices=["cpu"])) as client:
        assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "succeeded"
    assert Path(job["result"]["images"][0]["path"]).is_file()


@pytest.fixture
def redis_store():
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    client.flushdb()
    yield RedisJobStore(client)
    client.flushdb()
    client.close()


def test_the_redis_store_removes_old_finished_jobs_only(redis_store: RedisJobStore):
    store = redis_store
    ids = {}
    for name in ("old", "old-failed", "recent", "running", "queued-long-ago"):
        ids[name] = store.submit("images", "sd1.5", {"prompt": name}, DEVICE_QUEUE).id

    def claim(name: str) -> None:  # the queue's first job: the oldest (all at priority 0)
        claimed = store.claim_next(DEVICE_QUEUE, "w1")
        assert claimed is not None and claimed.id == ids[name]

    for name, status in (("old", "succeeded"), ("old-failed", "failed"), ("recent", "succeeded")):
        claim(name)
        store.finish(ids[name], "w1", JobStatus(status), {"images": []}, None)
    claim("running")
    long_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="milliseconds")
    for name in ("old", "old-failed"):
        store.redis.hset(job_key(ids[name]), "finished_at", long_ago)
    store.redis.hset(job_key(ids["queued-long-ago"]), "created_at", long_ago)

    removed = store.remove_finished(datetime.now(UTC) - timedelta(days=7))
    assert sorted(job.id for job in removed) == sorted([ids["old"], ids["old-failed"]])
    assert {job.request["prompt"] for job in removed} == {"old", "old-failed"}
    left = {job.id for job in store.list(limit=100)}
    assert left == {ids["recent"], ids["queued-long-ago"], ids["running"]}
    assert store.redis.zcard(JOBS) == 3
    assert not store.redis.exists(job_key(ids["old"]))
    assert store.remove_finished(datetime.now(UTC) - timedelta(days=7)) == []
