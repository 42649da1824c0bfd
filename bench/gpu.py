"""Speed on one NVIDIA GPU: plain diffusers vs. the same requests through the server.

Full-size SDXL and FLUX.1-schnell (real architectures, random weights; bench/full_models.py)
are written into a models dir, then, in one run on one card:

  (a) plain diffusers as a user writes it: fp16/bf16, SDPA, pipeline resident on the GPU,
      output_type="pil", saved as PNG — SDXL 1024², 30 steps, CFG 5; FLUX.1-schnell 1024², 4 steps
  (b) the same requests end to end through a real `python -m api serve` (submit with wait →
      PNG on disk), warm
  (c) the first request after start (load + compilation), and a model switch
      sdxl → flux → sdxl with one model resident (weights in the page cache)
  (d) the FLOP floor (torch.utils.flop_counter) against the measured bf16 matmul rate
  (e) with --comfyui: the same requests through ComfyUI's HTTP API (bench/comfyui.py)

    python bench/gpu.py --models-dir /tmp/dd-models --out bench/results [--runs 5] \
        [--comfyui /tmp/comfyui/ComfyUI --comfyui-site /tmp/comfysite]

Writes <out>/<date>-<card>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import full_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a lighthouse on a cliff at dusk, volumetric fog, cinematic lighting, 35mm film"
NEGATIVE = "blurry, low quality"
CASES = {
    "sdxl": {"steps": 30, "guidance_scale": 5.0, "dtype": torch.float16},
    "flux-schnell": {"steps": 4, "guidance_scale": 0.0, "dtype": torch.bfloat16},
}
SIZE = 1024
STAGES = ("build", "plain", "server", "restart", "switch", "comfyui")


def log(*parts: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def matmul_tflops() -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (start.elapsed_time(end) / 1000) / 1e12


def flops_of(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def flop_floor(pipe, name: str) -> dict[str, float]:
    """TFLOP of one denoiser step (with CFG for SDXL) and of the VAE decode at 1024²."""
    device, dtype = "cuda", CASES[name]["dtype"]
    latent = SIZE // 8
    if name == "sdxl":
        unet = pipe.unet
        sample = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
        text = torch.randn(2, 77, 2048, device=device, dtype=dtype)
        added = {
            "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
            "time_ids": torch.randn(2, 6, device=device, dtype=dtype),
        }
        step = flops_of(lambda: unet(sample, 500, text, added_cond_kwargs=added))
        vae_latent = torch.randn(1, 4, latent, latent, device=device, dtype=dtype)
    else:
        tokens = (latent // 2) ** 2
        transformer = pipe.transformer
        hidden = torch.randn(1, tokens, 64, device=device, dtype=dtype)
        text = torch.randn(1, 256, 4096, device=device, dtype=dtype)
        pooled = torch.randn(1, 768, device=device, dtype=dtype)
        img_ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
        txt_ids = torch.zeros(256, 3, device=device, dtype=dtype)
        timestep = torch.tensor([1.0], device=device, dtype=dtype)
        step = flops_of(
            lambda: transformer(
                hidden_states=hidden,
                encoder_hidden_states=text,
                pooled_projections=pooled,
                timestep=timestep,
                img_ids=img_ids,
                txt_ids=txt_ids,
            )
        )
        vae_latent = torch.randn(1, 16, latent, latent, device=device, dtype=dtype)
    decode = flops_of(lambda: pipe.vae.decode(vae_latent))
    steps = CASES[name]["steps"]
    return {
        "step_tflop": step / 1e12,
        "vae_decode_tflop": decode / 1e12,
        "request_tflop": (step * steps + decode) / 1e12,
    }


def plain_diffusers(models_dir: Path, name: str, runs: int, out: Path) -> dict:
    """(a): the pipeline as a user writes it, resident on the GPU, each image saved as PNG."""
    from diffusers import AutoPipelineForText2Image

    case = CASES[name]
    started = time.perf_counter()
    pipe = AutoPipelineForText2Image.from_pretrained(
        models_dir / name, torch_dtype=case["dtype"]
    ).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started
    arguments = {
        "prompt": PROMPT,
        "num_inference_steps": case["steps"],
        "guidance_scale": case["guidance_scale"],
        "width": SIZE,
        "height": SIZE,
    }
    if name == "sdxl":
        arguments["negative_prompt"] = NEGATIVE

    def one(seed: int) -> float:
        t0 = time.perf_counter()
        image = pipe(**arguments, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        image.save(out / f"plain-{name}-{seed}.png")
        return time.perf_counter() - t0

    torch.cuda.reset_peak_memory_stats()
    one(0)  # warm-up
    times = [one(seed) for seed in range(1, runs + 1)]
    peak = torch.cuda.max_memory_allocated() / 2**30
    floor = flop_floor(pipe, name)
    return {
        "load_s": load_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "peak_memory_gib_torch": peak,
        **floor,
    }


class PeakMemory:
    """The card's peak used memory (MiB) while the block runs, sampled from nvidia-smi (0
    without one: a smoke run on the CPU)."""

    def __enter__(self) -> PeakMemory:
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if shutil.which("nvidia-smi"):
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            used = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            self.peak = max(self.peak, int(used[0]) if used else 0)

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real `python -m api serve` process."""

    def __init__(self, models_dir: Path, data_dir: Path, out: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = out
        self.env = os.environ | {
            "DD_PORT": str(self.port),
            "DD_DATA_DIR": str(data_dir),
            "DD_MODELS_DIR": str(models_dir),
            "DD_ALLOWED_ROOTS": json.dumps([str(out)]),
            "DD_DEVICE": "cuda",
            "DD_ALLOW_DOWNLOADS": "false",
            "HF_HUB_OFFLINE": "1",
            "DD_LOG_LEVEL": "warning",
            **env,
        }
        self.log = (out / f"server-{self.port}.log").open("w")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "serve"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import httpx

        self.http = httpx.Client(base_url=self.url, timeout=900)
        self.requests: list[dict] = []  # each request's times, the server's own included
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("server died; see its log")
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        self.start_s = time.perf_counter() - started
        # until its runners have imported the model libraries and opened the GPU (DD_PRELOAD)
        while self.http.get("/health").json()["warming_up"]:
            time.sleep(0.1)
        self.prepared_s = time.perf_counter() - started

    def generate(self, name: str, seed: int, tag: str = "") -> float:
        case = CASES[name]
        body = {
            "model": name,
            "prompt": PROMPT,
            "num_inference_steps": case["steps"],
            "guidance_scale": case["guidance_scale"],
            "max_width": SIZE,
            "max_height": SIZE,
            "seed": seed,
            "output_image_path": str(self.out / f"api-{name}-{seed}{tag}.png"),
        }
        if name == "sdxl":
            body["negative_prompt"] = NEGATIVE
        t0 = time.perf_counter()
        job = self.http.post("/api/images?wait=600", json=body).json()
        elapsed = time.perf_counter() - t0
        if job.get("status") != "succeeded":
            raise RuntimeError(f"job did not succeed: {job}")
        self.last_timings = job["result"]["timings"]
        stamps = {
            k: datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at")
        }
        self.requests.append(
            {
                "model": name,
                "request_s": elapsed,
                "queued_s": (stamps["started_at"] - stamps["created_at"]).total_seconds(),
                "ran_s": (stamps["finished_at"] - stamps["started_at"]).total_seconds(),
                **job["result"]["timings"],
            }
        )
        return elapsed

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def through_server(models_dir: Path, data_dir: Path, out: Path, runs: int, env: dict) -> dict:
    """(b) warm requests and (c) the first request of each model after start."""
    server = Server(models_dir, data_dir, out, **env)
    result: dict = {"start_s": server.start_s}
    try:
        for name in CASES:
            first = server.generate(name, 0)
            times = [server.generate(name, seed) for seed in range(1, runs + 1)]
            server.generate(name, 1, tag="-again")
            result[name] = {
                "server_timings_s": server.last_timings,
                "first_request_s": first,
                "times_s": times,
                "median_s": statistics.median(times),
                "same_seed_same_pixels": same_pixels(
                    out / f"api-{name}-1.png", out / f"api-{name}-1-again.png"
                ),
            }
        health = server.http.get("/health").json()
        result["health"] = health
        result["requests"] = server.requests
    finally:
        server.stop()
    return result


def restart(models_dir: Path, data_dir: Path, out: Path, env: dict) -> dict:
    """(c) the first request of each model after a restart (compile cache on disk warm), with
    the server's own timings of it (``load_s``: the weights' load from the page cache), sent
    once the server's runners are ready (``prepared_s`` after the start: DD_PRELOAD's
    imports; ``start_s``: /health answering)."""
    server = Server(models_dir, data_dir, out, **env)
    try:
        first, timings = {}, {}
        for name in CASES:
            first[name] = server.generate(name, 200)
            timings[name] = server.last_timings
        return {
            "start_s": server.start_s,
            "prepared_s": server.prepared_s,
            "first_request_s": first,
            "server_timings_s": timings,
        }
    finally:
        server.stop()


def model_switch(models_dir: Path, data_dir: Path, out: Path, env: dict) -> dict:
    """(c) sdxl → flux → sdxl with one model resident (DD_MAX_LOADED_MODELS=1), after a
    first request of each (so each has been loaded once in this process, as after a day's
    work): each switch, the card's peak memory with that model alone on it, and whether the
    model coming back gives the pixels it gave before it left."""
    server = Server(models_dir, data_dir, out, DD_MAX_LOADED_MODELS="1", **env)
    try:
        order = ["sdxl", "flux-schnell", "sdxl", "flux-schnell"]
        switches = []
        for i, name in enumerate(order):
            with PeakMemory() as memory:
                seconds = server.generate(name, 300 + i % 2, tag=f"-switch{i}")
            switches.append(
                {
                    "model": name,
                    "request_s": seconds,
                    "server_timings_s": server.last_timings,
                    "peak_gpu_memory_mib": memory.peak,
                    # what the server's tensors hold after it: the evicted model given back?
                    "allocated_after_mib": server.http.get("/health").json()["devices"][0][
                        "memory_allocated_mb"
                    ],
                }
            )
        pixels_kept = {
            name: same_pixels(
                out / f"api-{name}-{300 + i % 2}-switch{i}.png",
                out / f"api-{name}-{300 + i % 2}-switch{i + 2}.png",
            )
            for i, name in enumerate(order[:2])
        }
        return {
            "start_s": server.start_s,
            "requests": switches,
            "same_pixels_after_switching_back": pixels_kept,
        }
    finally:
        server.stop()


def add_stage_arguments(parser: argparse.ArgumentParser, stages: tuple[str, ...], why: str) -> None:
    """--stages and --report: a run split over several calls, adding to one report."""
    parser.add_argument(
        "--stages",
        nargs="*",
        default=list(stages),
        choices=stages,
        help=f"what to run ({why}: later stages add to the report the earlier ones wrote, "
        "see --report)",
    )
    parser.add_argument("--report", type=Path, help="the report to write or add to")


def open_report(path: Path, key: str, card: str) -> dict:
    """The report at ``path`` to add to (empty when there is none), which must have been
    measured on ``card`` (its ``key``)."""
    report: dict = json.loads(path.read_text()) if path.is_file() else {}
    if report.get(key, card) != card:
        raise SystemExit(f"{path} was measured on {report[key]}, not {card}")
    return report


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit arrays, in dB (inf when identical)."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def same_pixels(a: Path, b: Path) -> bool:
    import numpy as np
    from PIL import Image

    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/dd-models"))
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dd-data"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--images", type=Path, default=Path("/tmp/dd-images"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--comfyui", type=Path, help="ComfyUI's folder: also time ComfyUI")
    parser.add_argument("--comfyui-site", type=Path, default=Path("/tmp/comfysite"))
    parser.add_argument(
        "--configs",
        default='{"default": {}}',
        help="JSON: server configuration name → extra DD_ settings; each is timed in turn "
        "(the ratios use the one named default)",
    )
    add_stage_arguments(parser, STAGES, "one call on a GPU machine may not fit them all")
    args = parser.parse_args()
    args.images.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    configs = json.loads(args.configs)

    import diffusers
    import transformers

    card = torch.cuda.get_device_name(0)
    slug = card.replace("NVIDIA ", "").replace(" ", "-").lower()
    today = datetime.now(UTC).isoformat(timespec="seconds")
    path = args.report or args.out / f"{today[:10]}-{slug}.json"
    report = open_report(path, "device", card)
    report.setdefault("date", today)
    report |= {
        "device": card,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "parameters_billion": full_models.parameter_counts(),
    }
    report["server_configs"] = report.get("server_configs", {}) | configs

    def save() -> None:  # after every stage, so a run cut short still leaves its figures
        path.write_text(json.dumps(report, indent=2) + "\n")

    if "build" in args.stages:
        log("building models")
        report["build_s"] = full_models.build(args.models_dir, list(CASES))
        report["bf16_matmul_tflops"] = matmul_tflops()
        save()
    if "plain" in args.stages:
        log("plain diffusers")
        report["plain"] = {}
        for name in CASES:
            report["plain"][name] = plain_diffusers(args.models_dir, name, args.runs, args.images)
            gc.collect()
            torch.cuda.empty_cache()  # the pipeline is gone with the call: free the card
            save()
    if "server" in args.stages:
        report.setdefault("api", {})
        for config, env in configs.items():
            log("through the server:", config)
            data_dir = args.data_dir / config  # its own compile cache: each config starts cold
            report["api"][config] = through_server(
                args.models_dir, data_dir, args.images, args.runs, env
            )
            save()
    default = report["server_configs"].get("default", {})
    if "restart" in args.stages:
        log("restart")
        report["restart"] = restart(
            args.models_dir, args.data_dir / "default", args.images, default
        )
        save()
    if "switch" in args.stages:
        log("model switch")
        report["switch"] = model_switch(
            args.models_dir, args.data_dir / "default", args.images, default
        )
        save()
    if "comfyui" in args.stages and args.comfyui:
        import comfyui

        site = args.comfyui_site if args.comfyui_site.is_dir() else None
        log("ComfyUI")
        try:
            report["comfyui"] = comfyui.measure(
                args.comfyui, args.models_dir, args.images, args.runs, site
            )
        except Exception as error:  # the server's figures stand without it
            report["comfyui_error"] = repr(error)
        save()
    if {"plain", "api"} <= report.keys():
        summarise(report)
        save()
        print_table(report)
    log("wrote", path)


def summarise(report: dict) -> None:
    """The ratios and targets (issue 14) from the stages measured so far."""
    import comfyui

    rate = report["bf16_matmul_tflops"]
    chosen = "default" if "default" in report["api"] else next(iter(report["api"]))
    if "comfyui" in report:
        comfyui.add_ratios(report, chosen)
    for name in CASES:
        plain, api = report["plain"][name], report["api"][chosen][name]
        key = "sdxl" if name == "sdxl" else "flux_schnell"
        report[f"{key}_warm_median_s"] = api["median_s"]
        report[f"{key}_plain_median_s"] = plain["median_s"]
        report[f"{key}_ratio_api_vs_plain"] = api["median_s"] / plain["median_s"]
        report[f"{key}_floor_s"] = plain["request_tflop"] / rate
        report[f"{key}_api_achieved_tflops"] = plain["request_tflop"] / api["median_s"]
        report[f"{key}_plain_achieved_tflops"] = plain["request_tflop"] / plain["median_s"]
        report[f"{key}_first_request_cold_cache_s"] = api["first_request_s"]
        if "restart" in report:
            first = report["restart"]["first_request_s"][name]
            load = report["restart"]["server_timings_s"][name]["load_s"]
            report[f"{key}_first_request_after_restart_s"] = first
            report[f"{key}_weights_load_s"] = load
            report[f"{key}_first_request_target_s"] = 1.5 * (api["median_s"] + load)
        if "switch" in report:
            report[f"{key}_switch_s"] = [
                r["request_s"] for r in report["switch"]["requests"] if r["model"] == name
            ]
            first = report["switch"]["requests"][0]  # the process's first model: alone
            if first["model"] == name:
                report[f"{key}_peak_gpu_memory_mib_alone"] = first["peak_gpu_memory_mib"]


def print_table(report: dict) -> None:
    versions = report["versions"]
    print(
        f"\n{report['device']}, torch {versions['torch']}, diffusers {versions['diffusers']}, "
        f"bf16 matmul {report['bf16_matmul_tflops']:.0f} TFLOP/s"
    )
    print("| model | server config | plain (a) s | api (b) s | b/a | first request s | floor s |")
    print("|---|---|---|---|---|---|---|")
    for name in CASES:
        key = "sdxl" if name == "sdxl" else "flux_schnell"
        plain = report["plain"][name]
        for config, runs in report["api"].items():
            api = runs[name]
            print(
                f"| {name} | {config} | {plain['median_s']:.3f} | {api['median_s']:.3f} | "
                f"{api['median_s'] / plain['median_s']:.3f} | {api['first_request_s']:.1f} | "
                f"{report[f'{key}_floor_s']:.3f} |"
            )
        if "comfyui" in report:
            comfy = report["comfyui"][name]
            print(
                f"| {name} | ComfyUI | {plain['median_s']:.3f} | {comfy['median_s']:.3f} | "
                f"{comfy['median_s'] / plain['median_s']:.3f} | {comfy['first_request_s']:.1f} | "
                f"{report[f'{key}_floor_s']:.3f} |"
            )


if __name__ == "__main__":
    main()
