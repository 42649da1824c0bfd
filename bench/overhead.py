"""What the server costs on top of diffusers (CPU, tiny models).

In one run: for text→image on each family, the median of N direct diffusers pipeline calls
(the image saved as PNG) against the same request end to end through a real
`python -m api serve` (submit with wait, until the file is on disk); then 20 jobs queued
at once (jobs/second), and 50 concurrent submitters while the runner is busy (p50/p95
submit latency: the event loop must stay responsive while the model computes).

    python bench/overhead.py [--runs 10] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAMILIES = {"sd1.5": "sd1.5", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux-schnell"}
SIZE, STEPS = 128, 4
PROMPT = "a lighthouse at dusk"


def direct_calls(models_dir: Path, model: str, runs: int, out: Path) -> list[float]:
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(models_dir / model)
    pipe.set_progress_bar_config(disable=True)

    def one(seed: int) -> float:
        started = time.perf_counter()
        image = pipe(
            prompt=PROMPT,
            num_inference_steps=STEPS,
            width=SIZE,
            height=SIZE,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        image.save(out / f"direct-{model}-{seed}.png")
        return time.perf_counter() - started

    one(0)
    return [one(seed) for seed in range(1, runs + 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models_dir: Path, data_dir: Path, out: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {
        "DD_PORT": str(port),
        "DD_DATA_DIR": str(data_dir),
        "DD_MODELS_DIR": str(models_dir),
        "DD_ALLOWED_ROOTS": json.dumps([str(out), str(data_dir)]),
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
        "DD_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def request(model: str, seed: int, out: Path, steps: int = STEPS) -> dict:
    return {
        "model": model,
        "prompt": PROMPT,
        "num_inference_steps": steps,
        "seed": seed,
        "max_width": SIZE,
        "max_height": SIZE,
        "output_image_path": str(out / f"api-{model}-{seed}.png"),
    }


def through_server(http: httpx.Client, model: str, runs: int, out: Path) -> list[float]:
    def one(seed: int) -> float:
        started = time.perf_counter()
        job = http.post("/api/images?wait=300", json=request(model, seed, out)).json()
        assert job["status"] == "succeeded", job
        return time.perf_counter() - started

    one(0)
    return [one(seed) for seed in range(1, runs + 1)]


def queue_throughput(http: httpx.Client, out: Path, jobs: int = 20) -> float:
    """Jobs per second for ``jobs`` submitted at once (sd1.5, 4 steps)."""
    started = time.perf_counter()
    ids = [
        http.post("/api/images", json=request("sd1.5", 1000 + i, out)).json()["id"]
        for i in range(jobs)
    ]
    for job_id in ids:
        assert http.get(f"/api/jobs/{job_id}?wait=300").json()["status"] == "succeeded"
    return jobs / (time.perf_counter() - started)


def submit_latency(url: str, out: Path, submitters: int = 50) -> dict[str, float]:
    """p50/p95 of 50 concurrent submissions while a long job keeps the runner busy."""
    with httpx.Client(base_url=url, timeout=60) as http:
        busy = http.post("/api/images", json=request("sd1.5", 1, out, steps=400)).json()
        while http.get(f"/api/jobs/{busy['id']}").json()["status"] != "running":
            time.sleep(0.02)

        def submit(i: int) -> float:
            with httpx.Client(base_url=url, timeout=60) as own:
                started = time.perf_counter()
                response = own.post("/api/images", json=request("sd1.5", 2000 + i, out))
                assert response.status_code == 202, response.text
                return time.perf_counter() - started

        with ThreadPoolExecutor(submitters) as pool:
            latencies = sorted(pool.map(submit, range(submitters)))
        for job in http.get("/api/jobs?status=queued&limit=100").json():
            http.delete(f"/api/jobs/{job['id']}")
        http.delete(f"/api/jobs/{busy['id']}")
    return {
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95) - 1],
        "max_ms": 1000 * latencies[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    from api.images.models.tiny import build_tiny_image_models

    scratch = Path(tempfile.mkdtemp(prefix="dd-overhead-"))
    models_dir, data_dir, images = scratch / "models", scratch / "data", scratch / "images"
    images.mkdir(parents=True)
    build_tiny_image_models(models_dir, list(FAMILIES.values()))

    report: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "size": SIZE,
        "steps": STEPS,
        "runs": args.runs,
        "families": {},
    }
    direct = {
        family: direct_calls(models_dir, model, args.runs, images)
        for family, model in FAMILIES.items()
    }
    process, url = start_server(models_dir, data_dir, images)
    try:
        with httpx.Client(base_url=url, timeout=300) as http:
            for family, model in FAMILIES.items():
                served = through_server(http, model, args.runs, images)
                a, b = statistics.median(direct[family]), statistics.median(served)
                report["families"][family] = {
                    "direct_median_ms": 1000 * a,
                    "api_median_ms": 1000 * b,
                    "overhead_ms": 1000 * (b - a),
                    "ratio": b / a,
                }
            report["queue_20_jobs_per_s"] = queue_throughput(http, images)
        report["submit_latency_50_concurrent"] = submit_latency(url, images)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{report['date'][:10]}-cpu-overhead.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("| family | direct ms | api ms | overhead ms | ratio |\n|---|---|---|---|---|")
    for family, row in report["families"].items():
        print(
            f"| {family} | {row['direct_median_ms']:.1f} | {row['api_median_ms']:.1f} | "
            f"{row['overhead_ms']:.1f} | {row['ratio']:.3f} |"
        )
    latency = report["submit_latency_50_concurrent"]
    print(
        f"20 queued jobs: {report['queue_20_jobs_per_s']:.2f} jobs/s; 50 concurrent submits "
        f"while busy: p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms"
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
