"""Where Wan 2.1's denoising time goes, and which attention kernel serves it best, on a GPU.

Wan 2.1 I2V 14B at 832x480, 81 frames is 32,760 video tokens a forward: per block the
self-attention's two products (4·L²·d ≈ 22 TFLOP) cost as much as all its linear layers
together (2·params·L ≈ 23 TFLOP), so the attention kernel sets half the step time. This
times ``--layers`` of its blocks at their published sizes (random weights, bf16; the whole
model is 40 blocks: times scale with the count) under each attention backend diffusers'
dispatcher offers with what the machine has, eager and with the blocks compiled (the
server's ``DD_COMPILE=auto``), and the bare attention product under each kernel. Outputs
are compared with the default backend's (relative L2 error).

    python bench/wan_attention.py --layers 4 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

TOKENS = (21, 60, 104)  # latent frames, height, width of 81x480x832 (VAE 4x8x8)


def timed(fn, runs: int) -> float:
    """Median milliseconds of ``fn`` over ``runs`` calls, CUDA events, after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def attention_kernels(runs: int) -> list[dict]:
    """The bare product at Wan's shape (40 heads of 128, 32,760 tokens) under each kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tokens = TOKENS[0] * (TOKENS[1] // 2) * (TOKENS[2] // 2)
    q, k, v = (torch.randn(1, 40, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in "qkv")
    flops = 4 * tokens * tokens * 128 * 40
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    rows = []
    for name, backend in [
        ("default", None),
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ]:
        try:

            def call(backend=backend):
                if backend is None:
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)

            ms = timed(call, runs)
            rows.append(
                {
                    "kernel": name,
                    "ms": round(ms, 2),
                    "tflops": round(flops / ms / 1e9, 1),
                    "rel_err": relative_error(call(), ref),
                }
            )
        except Exception as exc:  # noqa: BLE001  (a kernel this build or card lacks)
            rows.append({"kernel": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(rows[-1], flush=True)
    return rows


def blocks(layers: int, runs: int) -> list[dict]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(  # Wan2.1-I2V-14B's config, fewer blocks
        patch_size=(1, 2, 2),
        num_attention_heads=40,
        attention_head_dim=128,
        in_channels=36,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=13824,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=1280,
        added_kv_proj_dim=5120,
        rope_max_seq_len=1024,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = model.to("cuda", torch.bfloat16).eval()
    gen = torch.Generator("cuda").manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 36, *TOKENS, device="cuda", generator=gen).bfloat16(),
        "timestep": torch.tensor([500.0], device="cuda"),
        "encoder_hidden_states": torch.randn(1, 512, 4096, device="cuda", generator=gen).bfloat16(),
        "encoder_hidden_states_image": torch.randn(
            1, 257, 1280, device="cuda", generator=gen
        ).bfloat16(),
        "return_dict": False,
    }

    @torch.no_grad()
    def forward():
        return model(**inputs)[0]

    ref = forward()
    rows = []
    compiled = False
    for compile_blocks in (False, True):
        if compile_blocks and not compiled:
            model.compile_repeated_blocks(fullgraph=True)
            compiled = True
        for backend in ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flex"):
            row: dict = {"backend": backend, "compiled": compile_blocks}
            try:
                model.set_attention_backend(backend)
                started = time.perf_counter()
                out = forward()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - started, 1)
                row["ms"] = round(timed(forward, runs), 1)
                row["ms_per_block"] = round(row["ms"] / layers, 2)
                row["rel_err"] = relative_error(out, ref)
            except Exception as exc:  # noqa: BLE001  (a backend this build or card lacks)
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    import diffusers

    report = {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "layers": args.layers,
        "attention": attention_kernels(args.runs),
        "blocks": blocks(args.layers, args.runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "wan-attention.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"{'backend':<20}{'compiled':<10}{'ms/block':>10}{'rel_err':>10}")
    for row in report["blocks"]:
        if "ms" in row:
            print(
                f"{row['backend']:<20}{row['compiled']!s:<10}{row['ms_per_block']:>10}"
                f"{row['rel_err']:>10.4f}"
            )
        else:
            print(f"{row['backend']:<20}{row['compiled']!s:<10}  {row['error'][:80]}")


if __name__ == "__main__":
    main()
