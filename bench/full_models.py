"""Full-size SDXL and FLUX.1-schnell with random weights, in the diffusers layout.

Real architectures (the published configs) cost the same FLOPs as the real checkpoints, so
the server can be timed on a machine with no hub access. Weights are drawn on the GPU and
saved as safetensors (SDXL fp16, FLUX bf16, as the downloads are), one file per part (no
shards: ComfyUI's single-file loaders read the same files, bench/comfyui.py); tokenizers are
built here with the real vocabulary sizes (CLIP 49408, T5 32100 + padding to 32128).

    python bench/full_models.py DIR [--only sdxl flux-schnell] [--reduced]

--reduced writes a CPU-sized set for checking the wiring, not for timing: real widths and
text encoders, the fewest denoiser layers ComfyUI still recognises (the SDXL UNet with
Segmind Vega's transformer depths, one FLUX block of each kind), weights left undrawn.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

CLIP_VOCAB = 49408
T5_PIECES = 32000
T5_EXTRA_IDS = 100


def _byte_alphabet() -> list[str]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A byte-level BPE tokenizer with CLIP's layout and exactly 49408 tokens."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab[token] = len(vocab)
    letters = [c for c in alphabet if c.isalnum()] + [c for c in alphabet if not c.isalnum()]
    merges: list[tuple[str, str]] = []
    wanted = CLIP_VOCAB - 2
    for first in letters:
        for second in [*letters, *(c + "</w>" for c in letters)]:
            if len(vocab) >= wanted:
                break
            merged = first + second
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((first, second))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert len(vocab) == CLIP_VOCAB
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def t5_tokenizer():
    """A Unigram tokenizer with T5's layout: 32000 pieces, then 100 sentinels (32100)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    words = [a + b + c for a in alphabet for b in alphabet for c in alphabet]
    pieces += [("▁" + w, -8.0) for w in words[: T5_PIECES - len(pieces) - 200]]
    chars = alphabet + alphabet.upper() + "0123456789.,;:!?'\"()-_/&+*=%#@ "
    pieces += [(c, -12.0) for c in chars]
    while len(pieces) < T5_PIECES:
        pieces.append((f"▁zz{len(pieces)}", -14.0))
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(T5_EXTRA_IDS))]
    return T5Tokenizer(vocab=pieces, extra_ids=T5_EXTRA_IDS, model_max_length=512)


def clip_l_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def clip_bigg_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=1280,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def t5_xxl_config():
    from transformers import T5Config

    return T5Config(
        vocab_size=32128,
        d_model=4096,
        d_ff=10240,
        d_kv=64,
        num_heads=64,
        num_layers=24,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )


def sdxl_unet(reduced: bool = False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 1, 2) if reduced else (1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def vae(latent_channels: int, scaling_factor: float, shift_factor: float | None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=1024,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=True,
        use_quant_conv=latent_channels == 4,
        use_post_quant_conv=latent_channels == 4,
    )


def flux_transformer(reduced: bool = False):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1 if reduced else 19,
        num_single_layers=1 if reduced else 38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    )


@torch.no_grad()
def randomise(module: torch.nn.Module, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Fill every weight on the GPU: N(0, 0.02) for matrices, 1 for norm scales, 0 biases."""
    generator = torch.Generator("cuda").manual_seed(seed)
    module.to(device="cuda", dtype=dtype)
    for name, param in module.named_parameters():
        if param.ndim == 1:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        else:
            param.normal_(0.0, 0.02, generator=generator)
    return module


def _empty(make):
    with torch.device("meta"):
        module = make()
    return module.to_empty(device="cuda")


def _part(make, dtype: torch.dtype, seed: int, reduced: bool) -> torch.nn.Module:
    """A model part with drawn weights on the GPU, or (reduced) undrawn in CPU memory."""
    if not reduced:
        return randomise(_empty(make), dtype, seed)
    with torch.device("meta"):
        module = make()
    return module.to(dtype).to_empty(device="cpu")


def build_sdxl(folder: Path, reduced: bool = False) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    dtype = torch.float16
    pipe = StableDiffusionXLPipeline(
        vae=_part(lambda: vae(4, 0.13025, None), dtype, 1, reduced),
        text_encoder=_part(lambda: CLIPTextModel(clip_l_config()), dtype, 2, reduced),
        text_encoder_2=_part(
            lambda: CLIPTextModelWithProjection(clip_bigg_config()), dtype, 3, reduced
        ),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=_part(lambda: sdxl_unet(reduced), dtype, 4, reduced),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
        ),
    )
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size=UNSHARDED)
    clip_keys_as_published(folder / "text_encoder" / "model.safetensors")


def build_flux(folder: Path, reduced: bool = False) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, T5EncoderModel

    dtype = torch.bfloat16
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
        ),
        vae=_part(lambda: vae(16, 0.3611, 0.1159), dtype, 5, reduced),
        text_encoder=_part(lambda: CLIPTextModel(clip_l_config()), dtype, 6, reduced),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_part(lambda: T5EncoderModel(t5_xxl_config()), dtype, 7, reduced),
        tokenizer_2=t5_tokenizer(),
        transformer=_part(lambda: flux_transformer(reduced), dtype, 8, reduced),
    )
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size=UNSHARDED)
    clip_keys_as_published(folder / "text_encoder" / "model.safetensors")


def clip_keys_as_published(path: Path) -> None:
    """transformers 5 writes CLIPTextModel's keys without the `text_model.` prefix that the
    published checkpoints have (and ComfyUI's loaders look for); write them as published
    (transformers reads either)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    if all(key.startswith("text_model.") for key in weights):
        return
    published = {
        key if key.startswith("text_model.") else f"text_model.{key}": value
        for key, value in weights.items()
    }
    save_file(published, path, metadata={"format": "pt"})


BUILDERS = {"sdxl": build_sdxl, "flux-schnell": build_flux}
UNSHARDED = "100GB"  # above the largest part (FLUX's transformer, 23.8 GB): one file each


def parameter_counts() -> dict[str, float]:
    """Billions of parameters of the big parts (built on the meta device: no memory)."""
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    with torch.device("meta"):
        parts = {
            "sdxl_unet": sdxl_unet(),
            "sdxl_text_encoder_2": CLIPTextModelWithProjection(clip_bigg_config()),
            "flux_transformer": flux_transformer(),
            "t5_xxl_encoder": T5EncoderModel(t5_xxl_config()),
        }
    return {name: sum(p.numel() for p in m.parameters()) / 1e9 for name, m in parts.items()}


def build(models_dir: Path, names: list[str], reduced: bool = False) -> dict[str, float]:
    """Build the named models that are not there yet; returns seconds per model built.

    A folder this script wrote in shards (before one file per part) is written again."""
    seconds = {}
    for name in names:
        folder = models_dir / name
        ours = (folder / "bench-random-weights.json").is_file()
        if (folder / "model_index.json").is_file():
            if not any(folder.glob("*/*.safetensors.index.json")):
                if ours:  # written before the keys were as published
                    clip_keys_as_published(folder / "text_encoder" / "model.safetensors")
                continue
            if ours:
                shutil.rmtree(folder)
        started = time.perf_counter()
        BUILDERS[name](folder, reduced)
        (folder / "bench-random-weights.json").write_text(
            json.dumps({"random": True, "reduced": reduced})
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        seconds[name] = time.perf_counter() - started
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--only", nargs="*", default=list(BUILDERS))
    parser.add_argument("--reduced", action="store_true", help="CPU-sized wiring check set")
    args = parser.parse_args()
    print(build(args.dir, args.only, args.reduced))
