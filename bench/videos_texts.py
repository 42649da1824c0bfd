"""Speed of the video and text models on one NVIDIA GPU: plain diffusers / transformers as
their docs show them, against the same requests through the server, in one run.

Full-size LTX-Video 0.9, Wan 2.1 I2V 14B and Qwen2.5-VL-3B (their published architectures,
random weights, built here in their libraries' layouts) are written into a models dir;
then, per model:

  (a) plain: ``from_pretrained(torch_dtype=bf16).to("cuda")`` (Qwen: ``device_map="cuda"``,
      SDPA), resident, a warm-up call, then the timed call: image→video saved with
      ``export_to_video``; Qwen: a 1024-px image and a question, 256 new tokens (``generate``)
  (b) the same request through a real ``python -m api serve`` (``POST ...?wait=``: the mp4
      on disk; Qwen: its answer), after a first request (load + compilation), warm
  peak GPU memory of each (plain: torch's counter; server: nvidia-smi, sampled).

    python bench/videos_texts.py --only ltx-video qwen-2.5-vl --out $OUT [--steps N]
        [--step-cache 0.05 0.1]

Wan's 50 steps at 832x480x81 take minutes a call: ``--steps`` times fewer (the same in (a)
and (b), so the ratio holds), or ``--stages`` splits the run over calls on one machine,
adding to one report (``--report``; default <out>/<date>-<card>-videos-texts.json), e.g.

    python bench/videos_texts.py --only wan-2.1 --stages build plain --out $OUT
    python bench/videos_texts.py --only wan-2.1 --stages server --out $OUT
    python bench/videos_texts.py --only wan-2.1 --stages server --config fp8 \
        --env DD_PRECISION=fp8 --out $OUT
    python bench/videos_texts.py --only wan-2.1 --stages server --step-cache 0.1 --out $OUT

Warm-up calls (plain, and the server's first request) make WARM_UP_STEPS steps; the timed
call is one call (minutes for Wan). The report has each server configuration's time
against plain's under ``ratios_api_vs_plain``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
import full_models  # noqa: E402
from gpu import (  # noqa: E402
    PeakMemory,
    Server,
    add_stage_arguments,
    log,
    open_report,
    psnr,
)

PROMPT = "waves roll in under a grey sky, a lighthouse on the cliff, cinematic"
NEGATIVE = "worst quality, blurry, jittery"
QUESTION = "Describe this plate for a VFX supervisor: lighting, lens, what moves."
# --device cpu: a smoke run of the whole flow on the tiny models (python -m api tiny-models
# DIR --only ltx-video wan-2.1), to check the bench before spending GPU time on it
TINY_CASES = {
    "ltx-video": {"width": 64, "height": 64, "frames": 9, "steps": 2, "fps": 24},
    "wan-2.1": {"width": 64, "height": 64, "frames": 5, "steps": 2, "fps": 16},
}
VIDEO_CASES = {
    "ltx-video": {"width": 768, "height": 512, "frames": 161, "steps": 50, "fps": 24},
    "wan-2.1": {"width": 832, "height": 480, "frames": 81, "steps": 50, "fps": 16},
}
ANSWER_TOKENS = 256
# The warm-up call's steps, plain and through the server (loading and compiling are the
# same at any count; Wan's 50 steps take minutes)
WARM_UP_STEPS = 2
BF16 = torch.bfloat16


# --- full-size random models ------------------------------------------------------------


def build_ltx(folder: Path) -> None:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5EncoderModel

    pipe = LTXPipeline(  # the defaults of diffusers' LTX classes are LTX-Video 0.9's
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        ),
        vae=full_models.randomise(full_models._empty(AutoencoderKLLTXVideo), BF16, 21),
        text_encoder=full_models.randomise(
            full_models._empty(lambda: T5EncoderModel(full_models.t5_xxl_config())), BF16, 22
        ),
        tokenizer=full_models.t5_tokenizer(),
        transformer=full_models.randomise(full_models._empty(LTXVideoTransformer3DModel), BF16, 23),
    )
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")


def build_wan(folder: Path) -> None:
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    transformer = lambda: WanTransformer3DModel(  # noqa: E731  (Wan2.1-I2V-14B's config)
        patch_size=(1, 2, 2),
        num_attention_heads=40,
        attention_head_dim=128,
        in_channels=36,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=13824,
        num_layers=40,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=1280,
        added_kv_proj_dim=5120,
        rope_max_seq_len=1024,
    )
    umt5 = UMT5Config(  # umt5-xxl's encoder
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    )
    clip = CLIPVisionConfig(  # open-clip ViT-H/14
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=full_models.t5_tokenizer(),
        text_encoder=full_models.randomise(
            full_models._empty(lambda: UMT5EncoderModel(umt5)), BF16, 31
        ),
        image_encoder=full_models.randomise(
            full_models._empty(lambda: CLIPVisionModel(clip)), BF16, 32
        ),
        image_processor=CLIPImageProcessor(
            crop_size={"height": 224, "width": 224},
            size={"shortest_edge": 224},
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        transformer=full_models.randomise(full_models._empty(transformer), BF16, 33),
        vae=full_models.randomise(full_models._empty(AutoencoderKLWan), BF16, 34),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
    )
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")


def build_qwen(folder: Path) -> None:
    """Qwen2.5-VL-3B-Instruct's architecture; the tiny model's tokenizer, processor and
    template (the vocabulary's size doesn't change the compute: the embedding is a lookup,
    the output projection keeps the real 151936 rows)."""
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from api.texts.models import tiny

    tokenizer = tiny._qwen_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tiny._SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "hidden_act": "silu",
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "out_hidden_size": 2048,
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = full_models.randomise(
        full_models._empty(lambda: Qwen2_5_VLForConditionalGeneration(config)), BF16, 41
    )
    # no end token: every answer runs its full length, in (a) and (b) alike
    model.generation_config = GenerationConfig(
        pad_token_id=ids["<|endoftext|>"], eos_token_id=None, do_sample=False
    )
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")
    tokenizer.save_pretrained(folder)
    tiny._image_processor().save_pretrained(folder)
    template = {"chat_template": tiny.CHAT_TEMPLATE}
    (folder / "chat_template.json").write_text(json.dumps(template, indent=2) + "\n")


BUILDERS = {"ltx-video": build_ltx, "wan-2.1": build_wan, "qwen-2.5-vl": build_qwen}


# --- measuring -------------------------------------------------------------------------------


def plate(out: Path, width: int, height: int) -> Path:
    import numpy as np
    from PIL import Image

    path = out / f"plate-{width}x{height}.png"
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    pixels = np.broadcast_to((x * 0.6 + y * 0.4), (height, width, 3)).astype("uint8")
    Image.fromarray(pixels).save(path)
    return path


def save_mp4(frames: list, path: Path, fps: int) -> None:
    """The frames as an H.264 mp4, the way a user writes one with PyAV (diffusers'
    export_to_video needs imageio's ffmpeg, which the GPU machine lacks)."""
    import av
    import numpy as np
    from PIL import Image

    images = [  # PIL images (LTX), or floats in [0, 1] (Wan's numpy frames)
        frame
        if isinstance(frame, Image.Image)
        else Image.fromarray((np.asarray(frame) * 255).round().clip(0, 255).astype(np.uint8))
        for frame in frames
    ]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = images[0].size
        stream.pix_fmt = "yuv420p"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())


def plain_video(models_dir: Path, name: str, steps: int, out: Path) -> dict:
    from diffusers import LTXImageToVideoPipeline, WanImageToVideoPipeline
    from PIL import Image

    case = VIDEO_CASES[name]
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if name == "ltx-video":
        pipe = LTXImageToVideoPipeline.from_pretrained(models_dir / name, torch_dtype=BF16)
    else:  # as diffusers' Wan docs load it: the VAE and image encoder in float32
        from diffusers import AutoencoderKLWan
        from transformers import CLIPVisionModel

        folder = models_dir / name
        pipe = WanImageToVideoPipeline.from_pretrained(
            folder,
            vae=AutoencoderKLWan.from_pretrained(
                folder, subfolder="vae", torch_dtype=torch.float32
            ),
            image_encoder=CLIPVisionModel.from_pretrained(
                folder, subfolder="image_encoder", torch_dtype=torch.float32
            ),
            torch_dtype=BF16,
        )
    pipe.to("cuda" if on_gpu else "cpu")
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - started
    image = Image.open(plate(out, case["width"], case["height"]))

    def one(seed: int, steps: int) -> float:
        t0 = time.perf_counter()
        video = pipe(
            image=image,
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            width=case["width"],
            height=case["height"],
            num_frames=case["frames"],
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).frames[0]
        save_mp4(video, out / f"plain-{name}-{seed}.mp4", case["fps"])
        return time.perf_counter() - t0

    one(0, WARM_UP_STEPS)  # every kernel once (a step is the same at any count)
    seconds = one(1, steps)  # one timed call: minutes each
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else 0
    return {"load_s": load_s, "median_s": seconds, "peak_mib": peak}


def server_video(
    server: Server, name: str, steps: int, out: Path, step_caches: list[float] | None = None
) -> dict:
    """The server's first request (load + compile, WARM_UP_STEPS steps), then the timed one;
    with ``step_caches``, instead of the timed one, the timed request with each step_cache
    threshold: its time, how many transformer calls reused the cache, and its frames' PSNR
    against the uncached frames of an earlier server stage (random weights: how often the
    cache is reused differs on real weights)."""
    from api.common.video import decode_mp4

    case = VIDEO_CASES[name]
    last: dict = {}  # the last job's result

    def one(seed: int, steps: int, step_cache: float | None = None) -> float:
        suffix = f"-step_cache{step_cache}" if step_cache else ""
        body = {
            "model": name,
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "input_image_path": str(plate(out, case["width"], case["height"])),
            "max_width": case["width"],
            "max_height": case["height"],
            "num_frames": case["frames"],
            "num_inference_steps": steps,
            "seed": seed,
            "step_cache": step_cache,
            "output_video_path": str(out / f"api-{name}-{seed}{suffix}.mp4"),
        }
        t0 = time.perf_counter()
        job = server.http.post("/api/videos?wait=600", json=body).json()
        elapsed = time.perf_counter() - t0
        if job.get("status") != "succeeded":
            raise RuntimeError(f"job did not succeed: {job}")
        last.update(job["result"])
        return elapsed

    with PeakMemory() as memory:
        result: dict = {"first_request_s": one(0, WARM_UP_STEPS)}
        result["first_request_steps"] = WARM_UP_STEPS
        if not step_caches:
            result["median_s"] = one(1, steps)  # one timed request: minutes each
        uncached = out / f"api-{name}-1.mp4"  # from this or an earlier server stage
        for threshold in step_caches or []:
            elapsed = one(1, steps, threshold)
            cached = out / f"api-{name}-1-step_cache{threshold}.mp4"
            result[str(threshold)] = {
                "s": elapsed,
                "report": last["step_cache"],
                "psnr_db_vs_uncached": (
                    psnr(decode_mp4(cached), decode_mp4(uncached)) if uncached.is_file() else None
                ),
            }
    return result | {"server_timings_s": last["timings"], "peak_mib_card": memory.peak}


def plain_text(models_dir: Path, out: Path) -> dict:
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        models_dir / "qwen-2.5-vl", torch_dtype=BF16, attn_implementation="sdpa", device_map="cuda"
    )
    processor = AutoProcessor.from_pretrained(models_dir / "qwen-2.5-vl")
    load_s = time.perf_counter() - started
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.open(plate(out, 1024, 1024))},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]

    def one() -> tuple[float, int]:
        t0 = time.perf_counter()
        inputs = processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to("cuda")
        generated = model.generate(
            **inputs, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS, do_sample=False
        )
        tokens = generated.shape[1] - inputs["input_ids"].shape[1]
        processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :])
        return time.perf_counter() - t0, tokens

    one()
    seconds, tokens = one()
    peak = torch.cuda.max_memory_allocated() / 2**20
    return {
        "load_s": load_s,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_mib": peak,
    }


def server_text(server: Server, out: Path) -> dict:
    body = {
        "model": "qwen-2.5-vl",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(plate(out, 1024, 1024))},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        "temperature": 0,
        "seed": 1,
        "max_tokens": ANSWER_TOKENS,
    }

    def one() -> tuple[float, int, float | None]:
        """Seconds, tokens, and the time to the first token (the first progress event)."""
        t0 = time.perf_counter()
        job = server.http.post("/api/texts", json=body).json()
        first_token = None
        with server.http.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
            for line in stream.iter_lines():
                if first_token is None and line == "event: progress":
                    first_token = time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        done = server.http.get(f"/api/jobs/{job['id']}").json()
        if done["status"] != "succeeded":
            raise RuntimeError(f"job did not succeed: {done}")
        return elapsed, done["result"]["usage"]["completion_tokens"], first_token

    with PeakMemory() as memory:
        one()
        seconds, tokens, first_token = one()
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "first_token_s": first_token,
        "peak_mib_card": memory.peak,
    }


STAGES = ("build", "plain", "server")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/dd-models"))
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dd-data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=list(BUILDERS))
    parser.add_argument("--steps", type=int, help="video steps (default: each model's 50)")
    add_stage_arguments(parser, STAGES, "Wan's 50 steps don't fit one 10-minute call")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a smoke run of the video stages on the tiny models in --models-dir",
    )
    parser.add_argument(
        "--config", default="default", help="the server stage's name for its settings (--env)"
    )
    parser.add_argument(
        "--env", nargs="*", default=[], help="the server's settings, e.g. DD_PRECISION=fp8"
    )
    parser.add_argument(
        "--step-cache",
        type=float,
        nargs="*",
        default=[],
        help="the server stage times its request with each of these step_cache thresholds "
        "(instead of without)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        VIDEO_CASES.update(TINY_CASES)
        args.only = [name for name in args.only if name in TINY_CASES]
        args.stages = [stage for stage in args.stages if stage != "build"]
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    slug = card.split()[1].lower() if args.device == "cuda" else "cpu"  # NVIDIA H100 ... → h100
    path = args.report or args.out / f"{datetime.now(UTC):%Y-%m-%d}-{slug}-videos-texts.json"
    report = open_report(path, "card", card)
    report |= {"card": card, "torch": torch.__version__, "python": platform.python_version()}
    report.setdefault("date", datetime.now(UTC).isoformat(timespec="seconds"))
    env = dict(setting.split("=", 1) for setting in args.env)

    def save() -> None:  # after every stage, so a run cut short still leaves its figures
        path.write_text(json.dumps(report, indent=2) + "\n")

    for name in args.only:
        entry = report.setdefault(name, {})
        if "build" in args.stages:
            folder = args.models_dir / name
            started = time.perf_counter()
            if not any((folder / f).is_file() for f in ("model_index.json", "config.json")):
                BUILDERS[name](folder)
            torch.cuda.empty_cache()
            log(name, "built in", round(time.perf_counter() - started, 1), "s")
            if args.device == "cuda":
                report.setdefault("matmul_bf16_tflops", full_models_matmul())
        if name == "qwen-2.5-vl":
            if "plain" in args.stages:
                entry["plain"] = plain_text(args.models_dir, args.out)
                gc.collect()  # the plain model gone: the server gets the card
                torch.cuda.empty_cache()
                save()
            if "server" in args.stages:
                server = Server(args.models_dir, args.data_dir, args.out, **env)
                try:
                    entry.setdefault("server", {})[args.config] = server_text(server, args.out)
                finally:
                    server.stop()
        else:
            steps = args.steps or VIDEO_CASES[name]["steps"]
            if entry.setdefault("steps", steps) != steps:
                raise SystemExit(f"{path} has {name} at {entry['steps']} steps, not {steps}")
            if "plain" in args.stages:
                entry["plain"] = plain_video(args.models_dir, name, steps, args.out)
                gc.collect()  # the plain pipeline (in reference cycles) gone
                torch.cuda.empty_cache()
                save()
            if "server" in args.stages:
                config = args.config + ("-step-cache" if args.step_cache else "")
                server = Server(
                    args.models_dir, args.data_dir, args.out, DD_DEVICE=args.device, **env
                )
                try:
                    measured = server_video(server, name, steps, args.out, args.step_cache)
                finally:
                    server.stop()
                entry.setdefault("server", {})[config] = measured | {"env": env}
        entry["ratios_api_vs_plain"] = ratios(entry)
        log(name, json.dumps(entry, indent=2))
        save()
    log("wrote", path)


def ratios(entry: dict) -> dict[str, float]:
    """Each server configuration's time (tokens per second for Qwen) against plain's."""
    plain = entry.get("plain")
    found: dict[str, float] = {}
    for config, measured in entry.get("server", {}).items() if plain else ():
        if "tokens_per_s" in measured:
            found[config] = measured["tokens_per_s"] / plain["tokens_per_s"]
        if "median_s" in measured:
            found[config] = measured["median_s"] / plain["median_s"]
        for threshold, cached in measured.items():
            if isinstance(cached, dict) and "report" in cached:
                found[f"{config} {threshold}"] = cached["s"] / plain["median_s"]
    return found


def full_models_matmul() -> float:
    from gpu import matmul_tflops

    return matmul_tflops()


if __name__ == "__main__":
    main()
