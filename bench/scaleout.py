"""What Celery on Redis costs per job against the embedded engine (CPU, tiny models).

In one run, side by side: a real ``python -m api serve`` with the embedded engine (SQLite,
a runner thread), and a real one with ``DD_BROKER_URL`` plus one ``python -m api worker
--device cpu`` on the same tiny models. For each: the submit-to-start latency of jobs sent
one at a time to an idle engine (the job's ``started_at - created_at``, as the server
records them), the end-to-end time of one short job (``POST ?wait=``, sequential), and the
throughput of short jobs queued at once.

    python bench/scaleout.py [--runs 30] [--batch 30] [--redis redis://127.0.0.1:6379/8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
JOB = {"model": "sd1.5", "prompt": "x", "num_inference_steps": 1, "max_width": 64, "max_height": 64}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "api", *args],
        env=env,
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def ready(url: str, workers: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=2).json()
            if len(health.get("workers") or []) >= workers:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def measure(url: str, runs: int, batch: int) -> dict:
    http = httpx.Client(base_url=url, timeout=120)
    for _ in range(3):  # load the model, warm the paths
        assert http.post("/api/images?wait=120", json=JOB).json()["status"] == "succeeded"
    waits, totals = [], []
    for _ in range(runs):
        started = time.perf_counter()
        job = http.post("/api/images?wait=120", json=JOB).json()
        totals.append(time.perf_counter() - started)
        assert job["status"] == "succeeded", job
        created = datetime.fromisoformat(job["created_at"])
        waits.append((datetime.fromisoformat(job["started_at"]) - created).total_seconds())
        time.sleep(0.05)
    started = time.perf_counter()
    ids = [http.post("/api/images", json=JOB).json()["id"] for _ in range(batch)]
    for job_id in ids:
        assert http.get(f"/api/jobs/{job_id}?wait=300").json()["status"] == "succeeded"
    took = time.perf_counter() - started
    return {
        "submit_to_start_ms": {
            "p50": 1000 * statistics.median(waits),
            "p95": 1000 * statistics.quantiles(waits, n=20)[-1],
        },
        "one_job_end_to_end_ms": {
            "p50": 1000 * statistics.median(totals),
            "p95": 1000 * statistics.quantiles(totals, n=20)[-1],
        },
        "batch_jobs_per_s": batch / took,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    broker = redis.Redis.from_url(args.redis)
    broker.flushdb()
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "job": JOB,
        "runs": args.runs,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        models = tmp / "models"
        subprocess.run(
            [sys.executable, "-m", "api", "tiny-models", str(models), "--only", "sd1.5"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        base = os.environ | {
            "DD_MODELS_DIR": str(models),
            "DD_ALLOW_DOWNLOADS": "false",
            "HF_HUB_OFFLINE": "1",
            "DD_DEVICE": "cpu",
            "DD_LOG_LEVEL": "warning",
        }
        for name, distributed in (("embedded", False), ("celery", True)):
            port = free_port()
            env = base | {"DD_PORT": str(port), "DD_DATA_DIR": str(tmp / name)}
            if distributed:
                env["DD_BROKER_URL"] = args.redis
            processes = [start(["serve"], env, tmp / f"{name}.log")]
            if distributed:
                processes.append(start(["worker", "--device", "cpu"], env, tmp / "worker.log"))
            try:
                url = f"http://127.0.0.1:{port}"
                ready(url, 1 if distributed else 0)
                results[name] = measure(url, args.runs, args.batch)
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.wait(60)
            print(name, json.dumps(results[name]), flush=True)
    broker.flushdb()
    embedded, celery = results["embedded"], results["celery"]
    results["celery_adds_ms_per_job"] = {
        "submit_to_start_p50": celery["submit_to_start_ms"]["p50"]
        - embedded["submit_to_start_ms"]["p50"],
        "end_to_end_p50": celery["one_job_end_to_end_ms"]["p50"]
        - embedded["one_job_end_to_end_ms"]["p50"],
        "batch": 1000 / celery["batch_jobs_per_s"] - 1000 / embedded["batch_jobs_per_s"],
    }
    print(json.dumps(results["celery_adds_ms_per_job"], indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{datetime.now(UTC):%Y-%m-%d}-cpu-scaleout.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
