"""Scale-out, the way it runs: a real API server with DD_BROKER_URL and two real
``python -m api worker`` processes on the tiny models, through the Redis at 127.0.0.1:6379
(its database 7, emptied before and after). The processes are shared by the module's tests,
which run in order: each leaves both workers running for the next."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.tests.common.test_priorities import RUNS_IN, queue_at_priorities
from api.tests.common.test_server_process import REPO, Server, free_port
from api.tests.images.test_gpt_image import KEY as OPENAI_KEY
from api.tests.images.test_gpt_image import FakeOpenAI

REDIS_URL = "redis://127.0.0.1:6379/7"
QUICK = {
    "model": "sd1.5",
    "prompt": "x",
    "num_inference_steps": 2,
    "max_width": 64,
    "max_height": 64,
}
# Long enough to be caught running (tiny weights, the CPU): stopped by the tests.
LONG = QUICK | {"num_inference_steps": 400, "max_width": 128, "max_height": 128}

pytestmark = pytest.mark.slow


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("needs a Redis server at 127.0.0.1:6379 (CI has one)")
    return client


class Workers:
    """The worker processes of the module, started and killed by the tests."""

    def __init__(self, env: dict[str, str], logs: Path, api: Server) -> None:
        self.env = env
        self.logs = logs
        self.api = api
        self.processes: dict[int, subprocess.Popen] = {}

    def launch(self, *flags: str) -> int:
        log = (self.logs / f"worker-{len(self.processes)}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "api", "worker", "--device", "cpu", *flags],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[process.pid] = process
        return process.pid

    def start(self, *pids: int) -> None:
        """Wait until /health lists the launched workers ``pids`` (else launch one) as
        taking jobs (no longer warming up)."""
        started = set(pids or [self.launch()])
        until(lambda: started <= set(self.pids()), f"workers {started} ready in /health", self.log)

    def pids(self) -> list[int]:
        """The workers /health lists as taking jobs."""
        health = httpx.get(f"{self.api.url}/health", timeout=5).json()
        return [worker["pid"] for worker in health["workers"] if not worker["warming_up"]]

    def kill(self, pid: int) -> None:
        self.processes[pid].send_signal(signal.SIGKILL)
        self.processes.pop(pid).wait(10)

    def stop(self, pid: int) -> None:
        process = self.processes.pop(pid)
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for pid in list(self.processes):
            self.stop(pid)

    def log(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.logs.glob("worker-*.log")))


def until(condition: Any, what: str, log: Any = None, seconds: float = 120) -> Any:
    """Poll ``condition`` until it is truthy (and return it); fail saying ``what``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{log() if log else ''}")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> Iterator[tuple[Server, Workers, Path]]:
    """The API server (no model runs in it) and two CPU workers sharing its data dir."""
    store = redis_client()
    store.flushdb()
    provider = FakeOpenAI()  # gpt-image-1's jobs go to the external queue
    threading.Thread(target=provider.serve_forever, args=(0.05,), daemon=True).start()
    tmp = tmp_path_factory.mktemp("scaleout")
    show = tmp / "show"
    show.mkdir()
    env = os.environ | {
        "DD_BROKER_URL": REDIS_URL,
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(tmp / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": json.dumps([str(show), str(tmp / "data")]),
        "DD_ALLOW_DOWNLOADS": "false",
        "DD_WORKER_HEARTBEAT_SECONDS": "2",
        "OMP_NUM_THREADS": "1",  # two workers on CI's two cores
        "DD_JOB_ATTEMPTS": "2",
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": provider.base_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name in ("DD_API_KEYS", "DD_HOST", "DD_LOG_LEVEL", "DD_DEVICE"):
        env.pop(name, None)
    api = Server(env, tmp / "api.log")
    api.start()
    workers = Workers(env, tmp, api)
    try:
        workers.start(workers.launch(), workers.launch())
        yield api, workers, show
    finally:
        workers.stop_all()
        api.stop()
        provider.shutdown()
        provider.server_close()
        store.flushdb()


def wait_all(http: httpx.Client, ids: list[str], seconds: float = 180) -> list[dict]:
    deadline = time.monotonic() + seconds
    jobs = []
    for job_id in ids:
        left = max(1, int(deadline - time.monotonic()))
        jobs.append(http.get(f"/api/jobs/{job_id}", params={"wait": min(left, 600)}).json())
    return jobs


def test_jobs_spread_over_both_workers(cluster: tuple[Server, Workers, Path]):
    api, workers, show = cluster
    http = httpx.Client(base_url=api.url, timeout=200)
    health = http.get("/health").json()
    assert health["devices"] == []  # the API server runs no model
    assert health["broker"] == REDIS_URL
    assert {worker["device"] for worker in health["workers"]} == {"cpu"}
    assert all(worker["queues"] == ["device", "external"] for worker in health["workers"])
    assert not any(worker["warming_up"] for worker in health["workers"])  # both take jobs

    submitted = [
        http.post(
            "/api/images", json=QUICK | {"seed": seed, "output_image_path": f"{show}/{seed}.png"}
        )
        for seed in range(10)
    ]
    assert [response.status_code for response in submitted] == [202] * 10
    ids = [response.json()["id"] for response in submitted]
    jobs = wait_all(http, ids)

    assert [job["status"] for job in jobs] == ["succeeded"] * 10, jobs
    for seed, job in enumerate(jobs):
        [image] = job["result"]["images"]
        assert image["path"] == f"{show}/{seed}.png"
        assert Path(image["path"]).stat().st_size > 0
        assert Path(image["take_path"]).is_file()  # the take, as in the embedded mode
        assert http.get(image["url"]).content == Path(image["path"]).read_bytes()
        assert job["progress"]["step"] == job["progress"]["total"]
    ran_on = {job["worker"] for job in jobs}
    assert ran_on == {worker["name"] for worker in health["workers"]}, ran_on
    assert {f"cpu on {w['host']} (pid {w['pid']})" for w in health["workers"]} == ran_on

    listed = http.get("/api/jobs", params={"status": "succeeded", "limit": 10}).json()
    assert [job["id"] for job in listed] == ids[::-1]  # newest first
    after = http.get("/health").json()
    assert after["queues"]["device"] == {"queued": 0, "running": 0}
    assert after["queue"] == {"queued": 0, "running": 0}


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of an SSE stream."""
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            yield name, json.loads(line[6:])


def test_sse_progress_and_cancel(cluster: tuple[Server, Workers, Path]):
    api, workers, show = cluster
    http = httpx.Client(base_url=api.url, timeout=60)
    watched = http.post("/api/images", json=LONG | {"output_image_path": f"{show}/a.png"}).json()
    other = http.post("/api/images", json=LONG | {"output_image_path": f"{show}/b.png"}).json()
    until(
        lambda: http.get(f"/api/jobs/{other['id']}").json()["status"] == "running",
        "both long jobs running",
    )
    # Both workers busy: a third job waits, and cancelled there it never runs.
    queued = http.post("/api/images", json=QUICK | {"output_image_path": f"{show}/c.png"}).json()
    assert http.get(f"/api/jobs/{queued['id']}").json()["queue_position"] == 1
    cancelled = http.delete(f"/api/jobs/{queued['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert http.delete(f"/api/jobs/{queued['id']}").status_code == 409

    seen: list[tuple[str, dict]] = []
    cancel_sent = False
    with http.stream("GET", f"/api/jobs/{watched['id']}/events", timeout=120) as stream:
        for event, data in events(stream.iter_lines()):
            seen.append((event, data))
            if event == "progress" and data["step"] >= 2 and not cancel_sent:
                answer = http.delete(f"/api/jobs/{watched['id']}")
                assert answer.status_code == 200 and answer.json()["status"] == "running"
                cancel_sent = True
    statuses = [data["status"] for event, data in seen if event == "status"]
    assert statuses[0] in ("queued", "running")
    assert statuses[-1] == "cancelled"
    steps = [data["step"] for event, data in seen if event == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] < 400
    job = http.get(f"/api/jobs/{watched['id']}").json()
    assert job["status"] == "cancelled" and job["result"] is None
    http.delete(f"/api/jobs/{other['id']}")
    for job_id in (watched["id"], other["id"]):
        assert http.get(f"/api/jobs/{job_id}", params={"wait": 60}).json()["status"] == "cancelled"
    assert http.get(f"/api/jobs/{queued['id']}").json()["started_at"] is None
    assert sorted(path.name for path in show.glob("[abc].png")) == []  # nothing written
    until(lambda: http.get("/health").json()["queue"]["running"] == 0, "the workers idle")


def test_priorities_reorder_a_queue(cluster: tuple[Server, Workers, Path]):
    """Both workers busy: jobs queued at several priorities wait in priority order (then
    first come), their queue positions say so, and the worker freed first runs them in that
    order, whichever job's message it takes."""
    api, workers, show = cluster
    http = httpx.Client(base_url=api.url, timeout=60)
    busy = [http.post("/api/images", json=LONG).json() for _ in range(2)]
    for job in busy:
        until(
            lambda job=job: http.get(f"/api/jobs/{job['id']}").json()["status"] == "running",
            "both long jobs running",
        )
    submitted = queue_at_priorities(http, QUICK)
    assert http.get("/health").json()["queues"]["device"] == {"queued": 5, "running": 2}

    freed = http.delete(f"/api/jobs/{busy[0]['id']}").json()["worker"]
    done = wait_all(http, [submitted[name]["id"] for name in RUNS_IN])
    assert [job["status"] for job in done] == ["succeeded"] * len(RUNS_IN), done
    assert {job["worker"] for job in done} == {freed}  # the other worker still busy
    started = [job["started_at"] for job in done]
    assert started == sorted(started) and len(set(started)) == len(started)
    assert http.get(f"/api/jobs/{busy[1]['id']}").json()["status"] == "running"
    http.delete(f"/api/jobs/{busy[1]['id']}")
    until(lambda: http.get("/health").json()["queue"]["running"] == 0, "the workers idle")


def running_on(http: httpx.Client, job_id: str, not_on: str | None = None) -> dict:
    """The job once running (on a worker other than ``not_on``) with a step done."""

    def look() -> dict | None:
        job = http.get(f"/api/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        running = job["status"] == "running" and job["worker"] != not_on
        return job if running and (job["progress"] or {}).get("step", 0) >= 1 else None

    return until(look, f"job {job_id} running")


def pid_of(job: dict) -> int:
    return int(job["worker"].rpartition("pid ")[2].rstrip(")"))


def test_killed_workers_job_runs_elsewhere_then_fails_interrupted(
    cluster: tuple[Server, Workers, Path],
):
    """A worker SIGKILLed mid-job: its heartbeat stops, the job runs again on the other
    worker; killed there too (DD_JOB_ATTEMPTS=2), it fails as interrupted, not retried
    forever. Then the next job still runs."""
    api, workers, show = cluster
    http = httpx.Client(base_url=api.url, timeout=60)
    long = http.post("/api/images", json=LONG | {"output_image_path": f"{show}/long.png"}).json()
    first = running_on(http, long["id"])
    workers.kill(pid_of(first))

    second = running_on(http, long["id"], not_on=first["worker"])
    assert pid_of(second) in workers.processes
    assert second["created_at"] == first["created_at"]
    workers.kill(pid_of(second))

    failed = until(
        lambda: (job := http.get(f"/api/jobs/{long['id']}").json())["status"] == "failed" and job,
        "the job failed as interrupted",
    )
    assert failed["error"]["type"] == "interrupted"
    assert "2 time(s)" in failed["error"]["message"]
    assert not (show / "long.png").exists()

    workers.start()
    after = http.post("/api/images?wait=120", json=QUICK)
    assert after.status_code == 200 and after.json()["status"] == "succeeded", after.text


def test_api_restarted_with_jobs_queued(cluster: tuple[Server, Workers, Path]):
    """A worker stopped (SIGTERM) mid-job puts its job back in the queue. No worker
    running: jobs wait in Redis; the API server killed and started again still knows them,
    and the workers that come later run them all. A worker keeping a model (``--models``)
    then gets that model's jobs."""
    api, workers, show = cluster
    http = httpx.Client(base_url=api.url, timeout=60)
    long = http.post("/api/images", json=LONG | {"output_image_path": f"{show}/long2.png"}).json()
    running_on(http, long["id"])
    workers.stop_all()
    requeued = http.get(f"/api/jobs/{long['id']}").json()
    assert requeued["status"] == "queued", requeued
    assert requeued["worker"] is None and requeued["started_at"] is None
    assert requeued["queue_position"] == 1
    assert http.delete(f"/api/jobs/{long['id']}").json()["status"] == "cancelled"
    ids = [
        http.post(
            "/api/images", json=QUICK | {"seed": s, "output_image_path": f"{show}/r{s}.png"}
        ).json()["id"]
        for s in range(4)
    ]
    provider_job = http.post(
        "/api/images", json={"model": "gpt-image-1", "prompt": "x", "max_width": 64}
    ).json()
    queues = http.get("/health").json()["queues"]
    assert queues["device"] == {"queued": 4, "running": 0}
    assert queues["external"] == {"queued": 1, "running": 0}  # never behind the GPU work
    assert provider_job["queue_position"] == 1
    api.kill()
    api.start()
    assert [http.get(f"/api/jobs/{i}").json()["queue_position"] for i in ids] == [1, 2, 3, 4]

    general, keeper = workers.launch(), workers.launch("--models", "sd1.5")
    workers.start(general, keeper)
    jobs = wait_all(http, ids)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert all((show / f"r{s}.png").is_file() for s in range(4))
    assert {pid_of(job) for job in jobs} == {general}  # queued before the keeper came
    [done] = wait_all(http, [provider_job["id"]])
    assert done["status"] == "succeeded", done
    assert pid_of(done) == general  # the keeper takes only its model's queue

    routed = http.post("/api/images?wait=120", json=QUICK).json()
    assert routed["status"] == "succeeded"
    assert pid_of(routed) == keeper
    assert "device.sd1.5" in http.get("/health").json()["queues"]


def test_broker_password_never_shown(make_settings: Any):
    """A broker URL with a password: refused by this Redis (it has none), and neither the
    error nor /health-style output shows the password."""
    from fastapi.testclient import TestClient

    from api.common.errors import Unavailable
    from api.main import create_app

    redis_client()
    app = create_app(make_settings(broker_url="redis://:s3cret-pw@127.0.0.1:6379/7"))
    assert app.state.engine.broker == "redis://:***@127.0.0.1:6379/7"
    with pytest.raises(Unavailable) as refused, TestClient(app):
        pass
    assert "s3cret" not in str(refused.value)
    assert "redis://:***@127.0.0.1:6379/7" in str(refused.value)


def test_a_job_asking_for_a_job_through_the_workers(cluster: tuple[Server, Workers, Path]):
    """services.jobs.run_and_wait (a domain asking another for work) on the distributed
    engine, as a job on a worker calls it: the asked job runs on a worker; when the asking
    job is cancelled meanwhile, the asked one is cancelled too."""
    from api.common.jobs.distributed.engine import CeleryJobEngine
    from api.domains import Settings

    api, workers, show = cluster
    http = httpx.Client(base_url=api.url, timeout=60)
    request = http.get("/api/jobs", params={"limit": 1}).json()[0]["request"]
    engine = CeleryJobEngine.from_settings(Settings(broker_url=REDIS_URL))
    try:
        done = engine.run_and_wait("images", "sd1.5", request | {"seed": 3}, lambda: None)
        assert done.status == "succeeded" and done.worker in {
            f"cpu on {w['host']} (pid {w['pid']})" for w in http.get("/health").json()["workers"]
        }

        class AskerCancelled(Exception):
            pass

        looks = []

        def cancelled_after_a_while() -> None:
            looks.append(1)
            if len(looks) > 3:
                raise AskerCancelled

        long = request | {"num_inference_steps": 400, "max_width": 128, "max_height": 128}
        with pytest.raises(AskerCancelled):
            engine.run_and_wait("images", "sd1.5", long, cancelled_after_a_while)
        [asked] = engine.store.list(limit=1)
        assert http.get(f"/api/jobs/{asked.id}", params={"wait": 60}).json()["status"] == (
            "cancelled"
        )
    finally:
        engine.close()


def test_worker_refuses_bad_settings(tmp_path: Path):
    """No broker, or a device this machine lacks: exit status 2 and a message, at once."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DD_")}
    env["DD_DATA_DIR"] = str(tmp_path)
    worker = [sys.executable, "-m", "api", "worker"]
    no_broker = subprocess.run(worker, env=env, cwd=REPO, capture_output=True, text=True)
    assert no_broker.returncode == 2
    assert "DD_BROKER_URL: a worker needs the broker" in no_broker.stderr
    env["DD_BROKER_URL"] = "http://127.0.0.1:6379/7"
    not_redis = subprocess.run(worker, env=env, cwd=REPO, capture_output=True, text=True)
    assert not_redis.returncode == 2 and "must be a Redis URL" in not_redis.stderr
    env["DD_BROKER_URL"] = REDIS_URL
    bad_device = [*worker, "--device", "gpu0"]
    refused = subprocess.run(bad_device, env=env, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "--device 'gpu0'" in refused.stderr
    no_redis = "redis://:s3cret-pw@127.0.0.1:1/7"  # nothing listens on port 1
    serve = [sys.executable, "-m", "api", "serve"]
    down = subprocess.run(
        serve, env=env | {"DD_BROKER_URL": no_redis}, cwd=REPO, capture_output=True, text=True
    )
    assert down.returncode == 2
    assert "redis://:***@127.0.0.1:1/7 (DD_BROKER_URL) can't be reached" in down.stderr
    assert "s3cret" not in down.stderr + down.stdout
    typo = [*worker, "--device", "cpu", "--models", "sd15"]
    refused = subprocess.run(typo, env=env, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "no model 'sd15' (did you mean 'sd1.5'" in refused.stderr
