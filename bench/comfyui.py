"""ComfyUI on the same card: the requests of bench/gpu.py through ComfyUI's own HTTP API.

The same diffusers-layout folders that bench/full_models.py writes (and the server loads) are
linked, not copied, into a ComfyUI models tree: UNETLoader reads the UNet / FLUX transformer
file, DualCLIPLoader the two text encoders' files (ComfyUI converts the diffusers and
transformers keys itself), VAELoader the VAE's. Then, per model, in a fresh ComfyUI process
with its defaults (attention, precision, memory management, caching): a first request (load),
then N timed requests, each end to end: `POST /prompt` with an API-format workflow → the
websocket says the prompt finished → the PNG SaveImage wrote is on disk.

    python bench/comfyui.py --comfyui /tmp/comfyui/ComfyUI --models-dir /tmp/dd-models \
        [--site /tmp/comfysite] [--runs 5] [--size 256 --steps 1 --comfyui-args=--cpu]

ComfyUI runs with this interpreter; --site (its extra packages, installed with pip
--target) goes first on its PYTHONPATH. Needs aiohttp (ComfyUI's own dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu import CASES, NEGATIVE, PROMPT, SIZE, free_port, log  # noqa: E402

# What ComfyUI is asked for, matching each of the server's requests (bench/gpu.py). The
# server's SDXL scheduler is the checkpoint's EulerDiscreteScheduler (30 timesteps 958..1,
# "leading"); ComfyUI's euler + normal takes 30 evenly spaced ones 999..0: the same Euler
# update and step count, different timesteps, the same cost. FLUX.1-schnell: diffusers'
# FlowMatchEulerDiscreteScheduler (shift 1) is ComfyUI's euler + simple on schnell's
# shift-1 sampling; schnell has no guidance, and ComfyUI's CFG 1 skips the unconditional pass.
SAMPLING = {
    "sdxl": {"sampler_name": "euler", "scheduler": "normal", "cfg": 5.0},
    "flux-schnell": {"sampler_name": "euler", "scheduler": "simple", "cfg": 1.0},
}
# ComfyUI's name for each file it loads: (models subfolder, link name, file in the diffusers folder)
FILES = {
    "sdxl": {
        "unet": ("diffusion_models", "sdxl-unet.safetensors", "unet"),
        "clip1": ("text_encoders", "sdxl-clip-l.safetensors", "text_encoder"),
        "clip2": ("text_encoders", "sdxl-clip-g.safetensors", "text_encoder_2"),
        "vae": ("vae", "sdxl-vae.safetensors", "vae"),
    },
    "flux-schnell": {
        "unet": ("diffusion_models", "flux-schnell-transformer.safetensors", "transformer"),
        "clip1": ("text_encoders", "flux-clip-l.safetensors", "text_encoder"),
        "clip2": ("text_encoders", "flux-t5xxl.safetensors", "text_encoder_2"),
        "vae": ("vae", "flux-vae.safetensors", "vae"),
    },
}


def link_models(models_dir: Path, base: Path) -> None:
    """Symlink each part's single safetensors file into base/models/<kind>/ (no copies)."""
    for name, parts in FILES.items():
        for kind, link, part in parts.values():
            folder = models_dir / name / part
            files = [f for f in folder.glob("*.safetensors") if ".fp16." not in f.name]
            if len(files) != 1:
                raise SystemExit(
                    f"{folder}: ComfyUI needs one .safetensors file, found {len(files)}; "
                    "write the models again with bench/full_models.py (no shards)"
                )
            (base / "models" / kind).mkdir(parents=True, exist_ok=True)
            target = base / "models" / kind / link
            target.unlink(missing_ok=True)
            target.symlink_to(files[0].resolve())


def workflow(name: str, seed: int, size: int, steps: int, prefix: str) -> dict:
    """The request as an API-format ComfyUI graph (node id → class and inputs)."""
    files = {key: link for key, (_, link, _) in FILES[name].items()}
    flux = name == "flux-schnell"
    negative: dict = (
        {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}}
        if flux  # unused at CFG 1; zeroing the prompt's conditioning costs no encode
        else {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["2", 0]}}
    )
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": files["unet"], "weight_dtype": "default"},
        },
        "2": {
            "class_type": "DualCLIPLoader",
            "inputs": {
                "clip_name1": files["clip1"],
                "clip_name2": files["clip2"],
                "type": "flux" if flux else "sdxl",
                "device": "default",
            },
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}},
        "5": negative,
        "6": {
            "class_type": "EmptySD3LatentImage" if flux else "EmptyLatentImage",
            "inputs": {"width": size, "height": size, "batch_size": 1},
        },
        "7": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["4", 0],
                "negative": ["5", 0],
                "latent_image": ["6", 0],
                "seed": seed,
                "steps": steps,
                "denoise": 1.0,
                **SAMPLING[name],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


class ComfyUI:
    """A real ComfyUI server process (its main.py), driven over HTTP and its websocket."""

    def __init__(
        self, comfyui: Path, base: Path, output: Path, site: Path | None, args: list[str]
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = output
        (base / "web").mkdir(parents=True, exist_ok=True)  # the frontend is not carried
        (base / "custom_nodes").mkdir(exist_ok=True)  # none: ComfyUI as installed
        env = dict(os.environ)
        if site is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        self.log = (output / f"comfyui-{self.port}.log").open("w")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "main.py",
                "--listen",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--base-directory",
                str(base),
                "--output-directory",
                str(output),
                "--front-end-root",
                str(base / "web"),
                "--database-url",
                f"sqlite:///{base / 'comfyui.db'}",
                "--disable-api-nodes",  # nodes that call paid web services: no network here
                *args,
            ],
            cwd=comfyui,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import urllib.request

        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/system_stats", timeout=5) as answer:
                    self.system = json.load(answer)["system"]
                break
            except OSError:
                time.sleep(0.2)
        self.start_s = time.perf_counter() - started

    async def generate(self, graph: dict) -> tuple[float, Path]:
        """Submit → the websocket says the prompt is done → its PNG; seconds and the path."""
        import aiohttp

        client = uuid.uuid4().hex
        async with (
            aiohttp.ClientSession(self.url) as http,
            http.ws_connect(f"/ws?clientId={client}", max_msg_size=0) as ws,
        ):
            t0 = time.perf_counter()
            async with http.post("/prompt", json={"prompt": graph, "client_id": client}) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"ComfyUI refused the prompt: {answer}")
            prompt_id, images = answer["prompt_id"], []
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                event = json.loads(message.data)
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if event["type"] == "execution_error":
                    raise RuntimeError(f"ComfyUI failed: {data.get('exception_message')}")
                if event["type"] == "executed":
                    images += (data.get("output") or {}).get("images", [])
                if event["type"] == "executing" and data.get("node") is None:
                    break  # the whole prompt ran
            else:
                raise RuntimeError(f"ComfyUI's websocket closed; see {self.log.name}")
            paths = [self.output / i["subfolder"] / i["filename"] for i in images]
            if len(paths) != 1 or not paths[0].is_file():
                raise RuntimeError(f"expected one PNG on disk, got {paths}")
            return time.perf_counter() - t0, paths[0]

    def choices(self) -> list[str]:
        """What ComfyUI's log says it chose: device, VRAM mode, attention, dtypes, kernels."""
        said = Path(self.log.name).read_text(errors="replace").splitlines()
        marks = ("vram state", "Device:", "attention", "dtype", "comfy_kitchen backend")
        chose = {line.strip() for line in said if any(m in line for m in marks)}
        return sorted(line for line in chose if "keys" not in line)  # not key-mismatch lists

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def peak_memory():
    """The card's peak used memory (MiB, context included) from nvidia-smi, sampled every
    0.2 s; nothing to sample without one (a CPU check)."""
    if shutil.which("nvidia-smi") is None:
        from contextlib import nullcontext

        return nullcontext(None)
    from gpu import PeakMemory

    return PeakMemory()


def one_model(
    name: str,
    comfyui: Path,
    base: Path,
    out: Path,
    site: Path | None,
    args: list[str],
    runs: int,
    size: int,
    steps: int,
) -> dict:
    """A fresh ComfyUI for one model: a first request (load), then the timed ones."""

    def graph(seed: int) -> dict:
        return workflow(name, seed, size, steps, f"comfyui-{name}")

    async def requests(server: ComfyUI) -> tuple[float, list[float], list[str]]:
        first, _ = await server.generate(graph(0))
        times, pngs = [], []
        for seed in range(1, runs + 1):
            seconds, png = await server.generate(graph(seed))
            times.append(seconds)
            pngs.append(str(png))
        return first, times, pngs

    with peak_memory() as memory:
        server = ComfyUI(comfyui, base, out, site, args)
        try:
            first, times, pngs = asyncio.run(requests(server))
        finally:
            server.stop()
    return {
        "start_s": server.start_s,
        "first_request_s": first,
        "times_s": times,
        "median_s": statistics.median(times),
        "peak_gpu_memory_mib": memory.peak if memory is not None else None,
        "pngs": pngs,
        "size": size,
        "steps": steps,
        "workflow": graph(1),
        "comfyui": server.system.get("comfyui_version"),
        "comfyui_torch": server.system.get("pytorch_version"),
        "comfyui_chose": server.choices(),
    }


def measure(
    comfyui: Path,
    models_dir: Path,
    out: Path,
    runs: int = 5,
    site: Path | None = None,
    args: list[str] | None = None,
    size: int = SIZE,
    steps: int | None = None,
) -> dict:
    """Each model through ComfyUI (bench/gpu.py's requests); per model its medians,
    first request, process start and the card's peak memory."""
    comfyui = comfyui.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = comfyui.parent / "bundle.json"
    report: dict = {
        "bundle": json.loads(bundle.read_text()) if bundle.is_file() else None,
        "sampling": SAMPLING,
        "memory": "the card's used memory, nvidia-smi sampled every 0.2 s (context included)",
        "timing": "POST /prompt → websocket 'executing: null' for it → its PNG on disk",
    }
    with tempfile.TemporaryDirectory(prefix="comfyui-") as work:
        base = Path(work)
        link_models(models_dir, base)
        for name in CASES:
            log("ComfyUI:", name)
            report[name] = one_model(
                name,
                comfyui,
                base,
                out,
                site,
                args or [],
                runs,
                size,
                steps or CASES[name]["steps"],
            )
    return report


def add_ratios(report: dict, config: str) -> None:
    """Into a bench/gpu.py report: ComfyUI's medians and the server's (configuration
    `config`) over them."""
    for name in CASES:
        key = "sdxl" if name == "sdxl" else "flux_schnell"
        comfy = report["comfyui"][name]["median_s"]
        report[f"{key}_comfyui_median_s"] = comfy
        report[f"{key}_ratio_api_vs_comfyui"] = report["api"][config][name]["median_s"] / comfy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI's folder (main.py)")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/dd-models"))
    parser.add_argument("--images", type=Path, default=Path("/tmp/dd-images"))
    parser.add_argument("--site", type=Path, help="ComfyUI's packages (pip install --target)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--steps", type=int, help="instead of each model's (a CPU check)")
    parser.add_argument("--comfyui-args", default="", help="more of ComfyUI's flags, e.g. --cpu")
    parser.add_argument("--out", type=Path, help="write ComfyUI's figures here (JSON)")
    parser.add_argument(
        "--report",
        type=Path,
        help="a bench/gpu.py report of this machine: add ComfyUI's figures and the ratios",
    )
    args = parser.parse_args()
    import full_models

    full_models.build(args.models_dir, list(CASES))  # a set written in shards: again, unsharded
    report = measure(
        args.comfyui,
        args.models_dir,
        args.images,
        args.runs,
        args.site,
        args.comfyui_args.split(),
        args.size,
        args.steps,
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.report:
        full = json.loads(args.report.read_text())
        full["comfyui"] = report
        add_ratios(full, "default" if "default" in full["api"] else next(iter(full["api"])))
        args.report.write_text(json.dumps(full, indent=2) + "\n")
        log({k: v for k, v in full.items() if "comfyui" in k and k != "comfyui"})
    for name in CASES:
        result = report[name]
        log(name, f"median {result['median_s']:.3f} s, first {result['first_request_s']:.1f} s")


if __name__ == "__main__":
    main()
