"""DD_PRECISION=fp8 against bf16 on one NVIDIA GPU (Ada, Hopper): speed and fidelity.

Full-size SDXL and FLUX.1-schnell (bench/full_models.py) and Wan 2.1 I2V 14B
(bench/videos_texts.py), random weights, loaded by the server's own model code
(``load_model`` / ``load`` with the server's defaults: regional compile, channels-last for
the UNets), then per model, in one process on one card:

  bf16: a first call (compiles), the timed call (the pipeline as the server calls it, 8-bit
        output), one denoiser call timed alone on the inputs the pipeline gave it, the peak
        memory; and, per linear layer that FP8 takes (first, middle and last of each role),
        its relative error on the real activations of that call:
        ||y_fp8 - y_bf16|| / ||y_bf16||, next to bf16's own ||y_bf16 - y_fp32|| / ||y_fp32||
  fp8:  the same pipeline, its denoiser's layers turned FP8 by the server's ``use_fp8``
        (compiled afresh), the same calls, and the output's PSNR and largest difference
        against bf16's (same seed, same everything else)

Random weights make the pictures noise: their PSNR is a pessimistic, odd figure (there is
no image for FP8 to keep); the layer errors, on real-scale activations, are the meaningful
fidelity figures.

    python bench/fp8.py --models-dir /tmp/dd-models --out bench/results [--only sdxl flux wan]
        [--steps N]

Writes <out>/<date>-<card>-fp8.json and prints a markdown table. Wan runs 4 steps unless
told (50 take minutes a call); SDXL 30, FLUX.1-schnell 4.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
import full_models  # noqa: E402
import videos_texts  # noqa: E402
from gpu import log, matmul_tflops, psnr  # noqa: E402

from api.common.fp8 import FP8Linear, fp8_layers  # noqa: E402
from api.common.models import Weights, building_models  # noqa: E402
from api.common.pipelines import Speed, denoiser_of, precision_of, use_fp8  # noqa: E402

DEVICE = "cuda:0"
BF16 = torch.bfloat16
SPEED = Speed(compile="regional", channels_last=True)  # the server's defaults on CUDA
MODELS = {  # --only name: (folder, default steps)
    "sdxl": ("sdxl", 30),
    "flux": ("flux-schnell", 4),
    "wan": ("wan-2.1", 4),
}
IMAGE_PROMPT = "a lighthouse on a cliff at dusk, volumetric fog, cinematic lighting, 35mm film"
ROWS_KEPT = 2048  # of each sampled layer's input: rows (tokens) are quantised independently
DENOISER_REPEATS = 3


# --- the models, through the server's code ----------------------------------------------------


def build(models_dir: Path, name: str) -> float:
    folder = models_dir / MODELS[name][0]
    if (folder / "model_index.json").is_file():
        return 0.0
    started = time.perf_counter()
    if name == "wan":
        videos_texts.build_wan(folder)
        (folder / "bench-random-weights.json").write_text(json.dumps({"random": True}))
    else:
        full_models.build(models_dir, [MODELS[name][0]])
    gc.collect()
    torch.cuda.empty_cache()
    return time.perf_counter() - started


def load(models_dir: Path, name: str) -> Any:
    """The pipeline as the server loads it (bf16, straight onto the card, sped up)."""
    folder = models_dir / MODELS[name][0]
    weights = Weights("models_dir", str(folder))
    with building_models(DEVICE):
        if name == "wan":
            from api.videos.models.diffusion import load as load_video
            from api.videos.registry import VIDEO_MODELS

            return load_video(VIDEO_MODELS["wan-2.1"], weights, DEVICE, False, BF16, SPEED).base
        from api.images.models.diffusion import load_model
        from api.images.registry import IMAGE_MODELS

        return load_model(IMAGE_MODELS[MODELS[name][0]], weights, DEVICE, False, SPEED, BF16).base


def request(name: str, steps: int, images: Path) -> Callable[[Any], np.ndarray]:
    """One call of the model as the server makes it, its output as 8-bit pixels (Wan's
    input plate written into ``images``)."""
    if name == "wan":
        from PIL import Image

        from api.videos.models.diffusion import generate
        from api.videos.registry import VIDEO_MODELS

        case = videos_texts.VIDEO_CASES["wan-2.1"]
        guidance = VIDEO_MODELS["wan-2.1"].guidance_scale or 1.0  # >1: two calls a step
        plate = Image.open(videos_texts.plate(images, case["width"], case["height"]))

        def video(pipe: Any) -> np.ndarray:
            frames, _, _ = generate(
                pipe,
                plate,
                videos_texts.PROMPT,
                videos_texts.NEGATIVE,
                case["width"],
                case["height"],
                case["frames"],
                steps,
                guidance,
                seed=1,
                fps=case["fps"],
                progress=lambda step, total: None,
            )
            return frames

        return video

    def image(pipe: Any) -> np.ndarray:
        arguments: dict[str, Any] = {
            "prompt": IMAGE_PROMPT,
            "num_inference_steps": steps,
            "guidance_scale": 5.0 if name == "sdxl" else 0.0,
            "width": 1024,
            "height": 1024,
            "output_type": "pt",
            "generator": torch.Generator("cpu").manual_seed(1),
        }
        if name == "sdxl":
            arguments["negative_prompt"] = "blurry, low quality"
        picture = pipe(**arguments).images[0]
        return (picture.float() * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    return image


# --- measuring --------------------------------------------------------------------------------


class DenoiserCalls:
    """Counts the denoiser's calls and keeps the first one's inputs (a hook on the denoiser
    itself: outside the compiled blocks)."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.count = 0
        self.args: tuple = ()
        self.kwargs: dict = {}
        self.captured = False
        self.handle = denoiser.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.captured:

            def clone(value: Any) -> Any:
                return value.detach().clone() if isinstance(value, torch.Tensor) else value

            self.args, self.kwargs = tree_map(clone, args), tree_map(clone, kwargs)
            self.captured = True
        self.count += 1

    def remove(self) -> None:
        self.handle.remove()


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    torch.cuda.synchronize()
    started = time.perf_counter()
    value = call()
    torch.cuda.synchronize()
    return time.perf_counter() - started, value


def denoiser_ms(denoiser: torch.nn.Module, calls: DenoiserCalls) -> float:
    """One denoiser call on the first call's inputs, timed alone (CUDA events; median)."""
    times = []
    with torch.no_grad():
        denoiser(*calls.args, **calls.kwargs)  # warm
        for _ in range(DENOISER_REPEATS):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            denoiser(*calls.args, **calls.kwargs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def sampled_layers(denoiser: torch.nn.Module) -> list[str]:
    """Of the layers FP8 takes: the first, middle and last of each role (its name with the
    block numbers left out)."""
    roles: dict[str, list[str]] = {}
    for name in fp8_layers(denoiser):
        roles.setdefault(re.sub(r"\.\d+\.", ".#.", name), []).append(name)
    chosen = []
    for names in roles.values():
        chosen += sorted({names[0], names[len(names) // 2], names[-1]}, key=names.index)
    return chosen


def relative(error: torch.Tensor, reference: torch.Tensor) -> float:
    return float(error.float().norm() / reference.float().norm().clamp(min=1e-30))


@torch.no_grad()
def layer_errors(denoiser: torch.nn.Module, calls: DenoiserCalls) -> dict[str, dict[str, float]]:
    """Each sampled layer on the inputs it gets in the first denoiser call (run eagerly, so
    that hooks see inside the compiled blocks): FP8's relative error against bf16, and
    bf16's own against float32."""
    errors: dict[str, dict[str, float]] = {}

    def measure(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if name in errors:
                return
            inputs = args[0].reshape(-1, module.in_features)
            inputs = inputs[:: max(1, inputs.shape[0] // ROWS_KEPT)][:ROWS_KEPT]
            weight, bias = module.weight, module.bias
            exact = inputs.float() @ weight.float().t()
            if bias is not None:
                exact = exact + bias.float()
            bf16 = torch.nn.functional.linear(inputs, weight, bias)
            fp8 = FP8Linear(module)(inputs)
            errors[name] = {
                "fp8_vs_bf16": relative(fp8.float() - bf16.float(), bf16),
                "bf16_vs_fp32": relative(bf16.float() - exact, exact),
                "fp8_vs_fp32": relative(fp8.float() - exact, exact),
                "rows": inputs.shape[0],
                "in_features": module.in_features,
                "out_features": module.out_features,
            }

        return hook

    handles = [
        denoiser.get_submodule(name).register_forward_pre_hook(measure(name))
        for name in sampled_layers(denoiser)
    ]
    try:
        with torch.compiler.set_stance("force_eager"):
            denoiser(*calls.args, **calls.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return errors


def one_precision(
    pipe: Any, call: Callable[[Any], np.ndarray], calls: DenoiserCalls, repeat: bool
) -> dict:
    """The first call (compiles), the timed call (twice with ``repeat``: the faster counts,
    and whether the pixels are the same), a denoiser call alone, peak memory."""
    first_s, _ = timed(lambda: call(pipe))
    torch.cuda.reset_peak_memory_stats()
    calls.count = 0
    seconds, pixels = timed(lambda: call(pipe))
    calls_per_request = calls.count
    peak = torch.cuda.max_memory_allocated() / 2**30
    times = [seconds]
    same = None
    if repeat:
        again_s, again = timed(lambda: call(pipe))
        times.append(again_s)
        same = bool(np.array_equal(pixels, again))
    return {
        "precision": precision_of(pipe),
        "first_call_s": first_s,
        "call_s": min(times),
        "calls_s": times,
        "same_seed_same_pixels": same,
        "denoiser_calls_per_request": calls_per_request,
        "denoiser_call_ms": denoiser_ms(denoiser_of(pipe), calls),
        "peak_gib": peak,
        "resident_gib": torch.cuda.memory_allocated() / 2**30,
        "pixels": pixels,
    }


def bench_model(models_dir: Path, name: str, steps: int, images: Path) -> dict:
    result: dict[str, Any] = {"steps": steps, "build_s": build(models_dir, name)}
    load_s, pipe = timed(lambda: load(models_dir, name))
    result["load_s"] = load_s
    call = request(name, steps, images)
    repeat = name != "wan"  # a Wan call takes half a minute even at 4 steps
    denoiser = denoiser_of(pipe)
    calls = DenoiserCalls(denoiser)
    log(name, "bf16")
    bf16 = one_precision(pipe, call, calls, repeat)
    log(name, "layer errors")
    errors = layer_errors(denoiser, calls)

    log(name, "to fp8")
    converted_s, _ = timed(lambda: use_fp8(pipe))  # the server's step, before compiling
    torch._dynamo.reset()  # compiled afresh, as the server compiles an FP8 denoiser
    gc.collect()
    torch.cuda.empty_cache()
    log(name, "fp8")
    fp8 = one_precision(pipe, call, calls, repeat)
    calls.remove()
    reference, pixels = bf16.pop("pixels"), fp8.pop("pixels")
    difference = np.abs(pixels.astype(np.int16) - reference.astype(np.int16))
    fidelity = [value["fp8_vs_bf16"] for value in errors.values()]
    own = [value["bf16_vs_fp32"] for value in errors.values()]
    per_step = bf16["denoiser_calls_per_request"] / steps
    result |= {
        "bf16": bf16,
        "fp8": fp8,
        "to_fp8_s": converted_s,
        "fp8_layers": sum(isinstance(m, FP8Linear) for m in denoiser.modules()),
        "denoiser_step_ms": {"bf16": bf16["denoiser_call_ms"] * per_step}
        | {"fp8": fp8["denoiser_call_ms"] * per_step},
        "call_ratio_fp8_vs_bf16": fp8["call_s"] / bf16["call_s"],
        "denoiser_ratio_fp8_vs_bf16": fp8["denoiser_call_ms"] / bf16["denoiser_call_ms"],
        "psnr_db": psnr(pixels, reference),
        "max_abs_difference_8bit": int(difference.max()),
        "mean_abs_difference_8bit": float(difference.mean()),
        "layer_errors": errors,
        "layer_error_fp8_vs_bf16": {
            "median": statistics.median(fidelity),
            "max": max(fidelity),
            "max_layer": max(errors, key=lambda layer: errors[layer]["fp8_vs_bf16"]),
        },
        "layer_error_bf16_vs_fp32_median": statistics.median(own),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/dd-models"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--images", type=Path, default=Path("/tmp/dd-images"))
    parser.add_argument("--only", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, help="steps of every model (default: its own)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.models_dir.mkdir(parents=True, exist_ok=True)
    args.images.mkdir(parents=True, exist_ok=True)
    import diffusers

    card = torch.cuda.get_device_name(DEVICE)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": card,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(DEVICE))),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "server_speed": {"compile": SPEED.compile, "channels_last": SPEED.channels_last},
        "bf16_matmul_tflops": matmul_tflops(),
        "fp8_matmul_tflops": fp8_matmul_tflops(),
        "models": {},
    }
    slug = card.split()[1].lower() if card.startswith("NVIDIA ") else card.replace(" ", "-")
    path = args.out / f"{report['date'][:10]}-{slug}-fp8.json"
    for name in args.only:
        steps = args.steps or MODELS[name][1]
        log(name, steps, "steps")
        report["models"][name] = bench_model(args.models_dir, name, steps, args.images)
        gc.collect()  # the model gone: the card for the next
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        path.write_text(json.dumps(report, indent=2) + "\n")  # after each: a cut run keeps some
    print_table(report)
    log("wrote", path)


def fp8_matmul_tflops() -> float:
    """The card's FP8 rate through the same call as FP8Linear (8192³, per-row scales)."""
    from api.common.fp8 import quantise_rows, scaled_matmul

    n = 8192
    a, a_scale = quantise_rows(torch.randn(n, n, device=DEVICE, dtype=BF16))
    b, b_scale = quantise_rows(torch.randn(n, n, device=DEVICE, dtype=BF16))
    b_scale = b_scale.reshape(1, -1).contiguous()
    for _ in range(3):
        scaled_matmul(a, a_scale, b, b_scale, None)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        scaled_matmul(a, a_scale, b, b_scale, None)
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (start.elapsed_time(end) / 1000) / 1e12


def print_table(report: dict) -> None:
    print(
        f"\n{report['device']}, torch {report['versions']['torch']}, matmul bf16 "
        f"{report['bf16_matmul_tflops']:.0f} / fp8 {report['fp8_matmul_tflops']:.0f} TFLOP/s"
    )
    print(
        "| model | steps | call bf16 s | call fp8 s | fp8/bf16 | denoiser call bf16 ms | fp8 ms "
        "| fp8/bf16 | PSNR dB | max abs diff (8-bit) | peak GiB bf16 / fp8 | layer error fp8 vs "
        "bf16, median / max | bf16 vs fp32, median |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, run in report["models"].items():
        bf16, fp8 = run["bf16"], run["fp8"]
        layer = run["layer_error_fp8_vs_bf16"]
        print(
            f"| {name} | {run['steps']} | {bf16['call_s']:.3f} | {fp8['call_s']:.3f} | "
            f"{run['call_ratio_fp8_vs_bf16']:.3f} | {bf16['denoiser_call_ms']:.1f} | "
            f"{fp8['denoiser_call_ms']:.1f} | {run['denoiser_ratio_fp8_vs_bf16']:.3f} | "
            f"{run['psnr_db']:.1f} | {run['max_abs_difference_8bit']} | "
            f"{bf16['peak_gib']:.1f} / {fp8['peak_gib']:.1f} | "
            f"{layer['median']:.4f} / {layer['max']:.4f} | "
            f"{run['layer_error_bf16_vs_fp32_median']:.4f} |"
        )


if __name__ == "__main__":
    main()
