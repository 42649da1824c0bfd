"""What Celery on Redis costs per job against the embedded engine (CPU, tiny models).

In one run, side by side: a real ``python -m api serve`` with the embedded engine (SQLite,
a runner thread), and a real one with ``DD_BROKER_URL`` plus one ``python -m api worker
--device cpu`` on the same tiny models. For each: the submit-to-start latency of jobs sent
one at a time to an idle engine (the job's ``started_at - created_at``, as the server
records them), the time of a ``POST ?wait=`` call less the job's own run (what the engine
adds around the model), and, for short jobs queued at once, the hand-off from one job's end
to the next one's start and the throughput.

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


def ms(values: list[float]) -> dict[str, float]:
    """Median and 95th percentile, in milliseconds."""
    return {
        "p50": round(1000 * statistics.median(values), 1),
        "p95": round(1000 * statistics.quantiles(values, n=20)[-1], 1),
    }


def times(job: dict) -> tuple[datetime, datetime, datetime]:
    return tuple(
        datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at")
    )


def measure(url: str, runs: int, batch: int) -> dict:
    """The engine's own time, apart from the model's (noisy on a shared CPU): per job sent
    alone, submit to start and the whole call less the job's run; in a batch queued at
    once, the hand-off from one job's end to the next one's start."""
    http = httpx.Client(base_url=url, timeout=120)
    for _ in range(3):  # load the model, warm the paths
        assert http.post("/api/images?wait=120", json=JOB).json()["status"] == "succeeded"
    waits, overheads = [], []
    for _ in range(runs):
        started = time.perf_counter()
        job = http.post("/api/images?wait=120", json=JOB).json()
        wall = time.perf_counter() - started
        assert job["status"] == "succeeded", job
        created, began, finished = times(job)
        waits.append((began - created).total_seconds())
        overheads.append(wall - (finished - began).total_seconds())
        time.sleep(0.05)
    started = time.perf_counter()
    ids = [http.post("/api/images", json=JOB).json()["id"] for _ in range(batch)]
    jobs = [http.get(f"/api/jobs/{job_id}?wait=300").json() for job_id in ids]
    took = time.perf_counter() - started
    assert all(job["status"] == "succeeded" for job in jobs)
    spans = sorted(times(job)[1:] for job in jobs)
    handoffs = [
        (nxt[0] - end).total_seconds() for (_, end), nxt in zip(spans, spans[1:], strict=False)
    ]
    runs_s = sum((end - began).total_seconds() for began, end in spans)
    return {
        "submit_to_start_ms": ms(waits),
        "call_less_run_ms": ms(overheads),
        "batch_handoff_ms": ms(handoffs),
        "batch_jobs_per_s": round(batch / took, 2),
        "batch_model_share": round(runs_s / took, 3),
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
            "OMP_NUM_THREADS": "1",  # the model's time steadier on a shared CPU
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
    results["celery_adds_ms_per_job_p50"] = {
        what: round(celery[what]["p50"] - embedded[what]["p50"], 1)
        for what in ("submit_to_start_ms", "call_less_run_ms", "batch_handoff_ms")
    }
    print(json.dumps(results["celery_adds_ms_per_job_p50"], indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{datetime.now(UTC):%Y-%m-%d}-cpu-scaleout.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
