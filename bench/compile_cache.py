"""What a restarted server pays to get its compiled denoiser back, by each way PyTorch has of
keeping compiled code: SDXL's UNet and FLUX.1-schnell's transformer at full size (random
weights, real architectures), compiled whole, then loaded again in a fresh process.

Ways, each run in its own fresh Python process (a restart):

- ``eager``: no compilation (the step time to beat);
- ``jit``: ``module.compile(fullgraph=True)``, what ``DD_COMPILE=full`` does, with an empty
  inductor cache: the first call pays tracing + compiling; then ``jit-restart`` in a new
  process with the inductor cache on disk and the mega-cache artifacts
  (``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts``) loaded first;
- ``aoti``: ``torch.export`` + AOTInductor into a package without the weights
  (``package_constants_in_so=False``), then ``aoti-load`` in a new process: load the
  package and hand it the module's own weights (``load_constants(user_managed=True)``: no
  copy), the first call pays no compilation at all; ``aoti-load-copy``: the same with the
  weights copied into the package's own buffers (``user_managed=False``).

    python bench/compile_cache.py --only sdxl flux --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import full_models  # noqa: E402


class SdxlStep(torch.nn.Module):
    """One SDXL UNet call as the pipeline makes it (CFG batch of 2), flat tensor inputs."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        conditions = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=conditions,
            return_dict=False,
        )[0]


class FluxStep(torch.nn.Module):
    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, pooled, timestep, img_ids, txt_ids):
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]


def build(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    dtype = torch.bfloat16
    g = torch.Generator("cuda").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device="cuda", dtype=dtype)

    if name == "sdxl":
        unet = full_models.randomise(full_models._empty(full_models.sdxl_unet), dtype, 4)
        unet.to(memory_format=torch.channels_last)
        step = SdxlStep(unet).eval()
        sample = rand(2, 4, 128, 128).to(memory_format=torch.channels_last)
        time_ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2, device="cuda").to(dtype)
        inputs = (
            sample,
            torch.tensor(999.0, device="cuda"),
            rand(2, 77, 2048),
            rand(2, 1280),
            time_ids,
        )
        return step, inputs
    transformer = full_models.randomise(full_models._empty(full_models.flux_transformer), dtype, 8)
    step = FluxStep(transformer).eval()
    img_ids = torch.zeros(4096, 3, device="cuda", dtype=dtype)
    txt_ids = torch.zeros(512, 3, device="cuda", dtype=dtype)
    inputs = (
        rand(1, 4096, 64),
        rand(1, 512, 4096),
        rand(1, 768),
        torch.tensor([1.0], device="cuda", dtype=dtype),
        img_ids,
        txt_ids,
    )
    return step, inputs


def timed(fn, inputs, runs: int = 5) -> tuple[float, float, torch.Tensor]:
    """(first call's seconds, median of ``runs`` more, the output)."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        out = fn(*inputs)
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with torch.inference_mode():
            out = fn(*inputs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return first, statistics.median(times), out


def stage(name: str, way: str, work: Path) -> dict:
    """One way, in this process."""
    result: dict = {"model": name, "way": way}
    started = time.perf_counter()
    step, inputs = build(name)
    torch.cuda.synchronize()
    result["build_s"] = time.perf_counter() - started
    reference = work / f"{name}-eager.pt"
    mega = work / f"{name}-mega.bin"
    package = work / f"{name}.pt2"
    started = time.perf_counter()
    if way == "eager":
        fn = step
    elif way in ("jit", "jit-restart"):
        if way == "jit-restart" and mega.is_file():
            torch.compiler.load_cache_artifacts(mega.read_bytes())
        fn = torch.compile(step, fullgraph=True)
    elif way == "aoti":
        with torch.inference_mode():
            exported = torch.export.export(step, inputs, strict=False)
        result["export_s"] = time.perf_counter() - started
        torch._inductor.aoti_compile_and_package(
            exported,
            package_path=str(package),
            inductor_configs={"aot_inductor.package_constants_in_so": False},
        )
        result["package_bytes"] = package.stat().st_size
        fn = None
    elif way in ("aoti-load", "aoti-load-copy"):  # the weights used in place, or copied in
        runner = torch._inductor.aoti_load_package(str(package))
        wanted = runner.get_constant_fqns()
        own = dict(step.named_parameters()) | dict(step.named_buffers())
        result["constants"] = len(wanted)
        result["constants_missing"] = [fqn for fqn in wanted if fqn not in own][:20]
        runner.load_constants(
            {fqn: own[fqn] for fqn in wanted if fqn in own},
            check_full_update=not result["constants_missing"],
            user_managed=way == "aoti-load",
        )
        fn = runner
    else:
        raise ValueError(way)
    result["prepare_s"] = time.perf_counter() - started
    if fn is not None:
        first, median, out = timed(fn, inputs)
        result["first_call_s"] = first
        result["step_s"] = median
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if way == "eager":
            torch.save(out.cpu(), reference)
        elif reference.is_file():
            eager = torch.load(reference).cuda()
            result["max_abs_diff_vs_eager"] = (out.float() - eager.float()).abs().max().item()
            result["equal_to_eager"] = bool(torch.equal(out, eager))
        if way == "jit":
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is not None:
                mega.write_bytes(artifacts[0])
                result["mega_bytes"] = len(artifacts[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["sdxl", "flux"])
    parser.add_argument(
        "--ways", nargs="*", default=["eager", "aoti", "aoti-load", "jit", "jit-restart"]
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/dd-compile-cache"))
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--stage", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        name, way = args.stage
        print("RESULT " + json.dumps(stage(name, way, args.work)), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(args.work / "inductor"))
    results = []
    for name in args.only:
        for way in args.ways:
            started = time.perf_counter()
            proc = subprocess.run(
                # -X faulthandler: a crash in native code still says where it was
                [sys.executable, "-X", "faulthandler", __file__]
                + ["--work", str(args.work), "--stage", name, way],
                env=env,
                capture_output=True,
                text=True,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            result = json.loads(line[-1][7:]) if line else {"model": name, "way": way}
            result["process_s"] = time.perf_counter() - started
            if proc.returncode:
                result["returncode"] = proc.returncode  # negative: killed by that signal
                result["error"] = proc.stderr[-3000:]
            print(json.dumps(result), flush=True)
            results.append(result)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compile-cache.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
