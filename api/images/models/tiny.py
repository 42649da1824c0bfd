"""Tiny random-weight stand-ins for the image models the server serves.

Each model is written with ``DiffusionPipeline.save_pretrained``, the diffusers layout of the real
repositories (``model_index.json`` plus one subfolder per component, safetensors weights), so it
loads with e.g. ``AutoPipelineForText2Image.from_pretrained(folder)``. Architectures mirror the real
models (component classes, latent channels, VAE scale factor 8, conditioning wiring) at a few
dozen channels, so every folder is well under 5 MB and a 64x64 generation takes milliseconds on
CPU. Everything is built offline: tokenizers are generated in memory and weights come from
per-component seeds, so building twice gives byte-identical files.
"""

import json
import shutil
import string
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from api.common.models import TINY_MARKER

TINY_IMAGE_MODELS: dict[str, str] = {
    "sd1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl-refiner": "stabilityai/stable-diffusion-xl-refiner-1.0",
    "RealVisXL": "SG161222/RealVisXL_V4.0",
    "Fluently-XL": "fluently/Fluently-XL-v4",
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd3.5": "stabilityai/stable-diffusion-3.5-medium",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
}

# Words the tokenizers know as whole tokens; anything else falls back to smaller pieces.
_CORPUS = """
a an the of on in at with and to by from for into over under near behind
photo photograph picture image painting drawing illustration render portrait landscape
close up closeup wide shot view detailed highly realistic photorealistic cinematic lighting
soft hard light dark bright night day sunset sunrise morning evening golden hour
cat cats dog dogs horse bird fish animal person man woman child girl boy people face
astronaut robot car house city street forest mountain mountains river lake sea ocean beach
sky cloud clouds sun moon star stars snow rain tree trees flower flowers garden field
red orange yellow green blue purple pink black white gray brown colorful
sitting standing running walking flying riding holding wearing looking
small large big tiny old young beautiful cute happy sad
style art artwork digital oil watercolor sketch anime cartoon 3d 4k 8k hd
quality best masterpiece high low resolution sharp focus blurry bokeh depth field
background foreground table chair window door room wall floor
"""

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_T5_EXTRA_IDS = 100
_CLIP_MAX_LENGTH = 77
_T5_MAX_LENGTH = 512  # as the real T5 tokenizers of SD3 and Flux


def _seed(model: str, component: str) -> None:
    """Seed torch from the model and component names (stable across runs and processes)."""
    torch.manual_seed(zlib.crc32(f"{model}/{component}".encode()))


def _corpus_words() -> list[str]:
    return list(dict.fromkeys(_CORPUS.split()))


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


def _printable_bytes() -> list[int]:
    """The bytes that byte-level BPE (GPT-2, CLIP, Qwen) writes as themselves."""
    return [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]


def _byte_alphabet() -> list[str]:
    """The byte-level alphabet: one printable character per byte value, in the order of the
    vocabularies of CLIP, GPT-2 and Qwen (the printable bytes first)."""
    printable = _printable_bytes()
    # The other bytes map, in byte order, to the code points right after U+00FF.
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def _byte_level(text: str) -> str:
    """``text``'s UTF-8 bytes in the byte-level alphabet, as byte-level BPE sees them
    (a space becomes "Ġ")."""
    printable = set(_printable_bytes())
    others = [b for b in range(256) if b not in printable]
    characters = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return "".join(characters[b] for b in text.encode())


def _learn_bpe_merges(words: list[str], end_of_word: str = "</w>") -> list[tuple[str, str]]:
    """Greedy BPE over the corpus words until each is a single symbol; ties break by pair.
    ``end_of_word`` marks a word's last symbol (CLIP's "</w>"; GPT-2-style vocabularies
    have none and mark a word's start with "Ġ" instead)."""
    splits = [(*word[:-1], word[-1] + end_of_word) for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in splits:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        splits = [_apply_merge(symbols, best) for symbols in splits]


def _apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def _clip_tokenizer(pad_token: str = _CLIP_EOS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer laid out like openai/clip: bytes, bytes + </w>, merges, specials."""
    alphabet = _byte_alphabet()
    merges = _learn_bpe_merges(_corpus_words())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=_CLIP_MAX_LENGTH
    )


def _t5_tokenizer(model_max_length: int = _T5_MAX_LENGTH) -> T5Tokenizer:
    """A T5-style Unigram tokenizer: <pad>=0, </s>=1, <unk>=2, pieces, then reversed sentinels."""
    characters = string.ascii_letters + string.digits + ".,;:!?'\"()-_/&+*=%#@"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -6.0) for word in _corpus_words()]
    pieces += [(character, -10.0) for character in characters]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(_T5_EXTRA_IDS))]
    return T5Tokenizer(vocab=pieces, extra_ids=_T5_EXTRA_IDS, model_max_length=model_max_length)


# ---------------------------------------------------------------------------------------------
# Shared components
# ---------------------------------------------------------------------------------------------


def _clip_text_encoder(
    model: str,
    component: str,
    tokenizer: CLIPTokenizer,
    *,
    with_projection: bool,
    hidden_act: str = "quick_gelu",
) -> CLIPTextModel | CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seed(model, component)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config)


def _t5_text_encoder(
    model: str, component: str, tokenizer: T5Tokenizer, *, d_model: int
) -> T5EncoderModel:
    """Encoder of a T5 v1.1 (gated-gelu feed-forward), like t5-v1_1-xxl."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=d_model * 2,
        num_layers=2,
        num_heads=d_model // 8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    _seed(model, component)
    return T5EncoderModel(config)


def _vae(
    model: str,
    *,
    latent_channels: int,
    scaling_factor: float,
    shift_factor: float | None = None,
) -> AutoencoderKL:
    """Four levels like the real VAEs (scale factor 8); 16-channel ones drop the quant convs."""
    has_quant_convs = latent_channels == 4
    _seed(model, "vae")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=has_quant_convs,
        use_post_quant_conv=has_quant_convs,
    )


def _sdxl_unet(model: str, *, cross_attention_dim: int, add_time_ids: int) -> UNet2DConditionModel:
    """SDXL-style UNet: linear projections and "text_time" conditioning on pooled text + sizes."""
    addition_time_embed_dim = 8
    _seed(model, "unet")
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # pooled text_encoder_2 projection (32) followed by the micro-conditioning values
        projection_class_embeddings_input_dim=32 + add_time_ids * addition_time_embed_dim,
    )


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _sdxl_vae(model: str) -> AutoencoderKL:
    return _vae(model, latent_channels=4, scaling_factor=0.13025)


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------


def _stable_diffusion(model: str) -> DiffusionPipeline:
    tokenizer = _clip_tokenizer()
    text_encoder = _clip_text_encoder(model, "text_encoder", tokenizer, with_projection=False)
    _seed(model, "unet")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=32,
    )
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_vae(model, latent_channels=4, scaling_factor=0.18215),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _stable_diffusion_xl(model: str) -> DiffusionPipeline:
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer(pad_token="!")
    return StableDiffusionXLPipeline(
        vae=_sdxl_vae(model),
        text_encoder=_clip_text_encoder(model, "text_encoder", tokenizer, with_projection=False),
        text_encoder_2=_clip_text_encoder(
            model, "text_encoder_2", tokenizer_2, with_projection=True, hidden_act="gelu"
        ),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        # cross-attention sees both encoders' hidden states concatenated; 6 size/crop values
        unet=_sdxl_unet(model, cross_attention_dim=64, add_time_ids=6),
        scheduler=_sdxl_scheduler(),
    )


def _stable_diffusion_xl_refiner(model: str) -> DiffusionPipeline:
    tokenizer_2 = _clip_tokenizer(pad_token="!")
    return StableDiffusionXLImg2ImgPipeline(
        vae=_sdxl_vae(model),
        text_encoder=None,
        text_encoder_2=_clip_text_encoder(
            model, "text_encoder_2", tokenizer_2, with_projection=True, hidden_act="gelu"
        ),
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        # only text_encoder_2 feeds cross-attention; 2 sizes + 2 crops + aesthetic score
        unet=_sdxl_unet(model, cross_attention_dim=32, add_time_ids=5),
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _stable_diffusion_3(
    model: str, *, qk_norm: str | None = None, dual_attention_layers: tuple[int, ...] = ()
) -> DiffusionPipeline:
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer(pad_token="!")
    tokenizer_3 = _t5_tokenizer()
    text_encoder = _clip_text_encoder(model, "text_encoder", tokenizer, with_projection=True)
    text_encoder_2 = _clip_text_encoder(
        model, "text_encoder_2", tokenizer_2, with_projection=True, hidden_act="gelu"
    )
    # T5 width 64 holds the two CLIP hidden states side by side (as 4096 holds 768 + 1280).
    text_encoder_3 = _t5_text_encoder(model, "text_encoder_3", tokenizer_3, d_model=64)
    _seed(model, "transformer")
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=64,
        dual_attention_layers=dual_attention_layers,
        qk_norm=qk_norm,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(model, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _stable_diffusion_3_5(model: str) -> DiffusionPipeline:
    return _stable_diffusion_3(model, qk_norm="rms_norm", dual_attention_layers=(0,))


def _flux_schnell(model: str) -> DiffusionPipeline:
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    text_encoder = _clip_text_encoder(model, "text_encoder", tokenizer, with_projection=False)
    text_encoder_2 = _t5_text_encoder(model, "text_encoder_2", tokenizer_2, d_model=32)
    _seed(model, "transformer")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=False,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(model, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


# Builds a model's files into the given (empty) folder.
Builder = Callable[[str, Path], None]


@dataclass(frozen=True)
class TinyModel:
    imitates: str  # the real repo id
    build: Builder


def _saved_pipeline(make: Callable[[str], DiffusionPipeline]) -> Builder:
    def build(name: str, folder: Path) -> None:
        make(name).save_pretrained(folder, safe_serialization=True)

    return build


_PIPELINE_BUILDERS: dict[str, Callable[[str], DiffusionPipeline]] = {
    "sd1.5": _stable_diffusion,
    "sdxl": _stable_diffusion_xl,
    "sdxl-refiner": _stable_diffusion_xl_refiner,
    "RealVisXL": _stable_diffusion_xl,
    "Fluently-XL": _stable_diffusion_xl,
    "sd3": _stable_diffusion_3,
    "sd3.5": _stable_diffusion_3_5,
    "flux-schnell": _flux_schnell,
}


def tiny_models() -> dict[str, TinyModel]:
    """Every tiny model: the diffusion pipelines here, plus the builders that other modules
    add (ControlNets and IP-Adapters in tiny_adapters, task models in tiny_tasks)."""
    from api.images.models import tiny_adapters, tiny_tasks

    models = {
        name: TinyModel(TINY_IMAGE_MODELS[name], _saved_pipeline(make))
        for name, make in _PIPELINE_BUILDERS.items()
    }
    return models | tiny_adapters.TINY_MODELS | tiny_tasks.TINY_MODELS


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_model(models_dir: Path, name: str, model: TinyModel) -> None:
    """Build into a temporary folder beside the target, then swap it into place."""
    target = models_dir / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=models_dir))
    staging.chmod(0o755)
    try:
        # Builders seed torch's global generator; keep the caller's random state untouched.
        with torch.random.fork_rng(devices=[]):
            model.build(name, staging)
        marker = {
            "built_by": "deferred-diffusion tiny-models",
            "imitates": model.imitates,
            "model": name,
            "tiny": True,
        }
        (staging / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=models_dir))
            target.rename(retired / name)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tiny_image_models(models_dir: Path, names: Iterable[str] | None = None) -> list[str]:
    """Write a tiny random-weight copy of each named image model into models_dir/<name>/.

    ``names`` defaults to every tiny model (``tiny_models()``). Returns the names written.
    """
    return write_tiny_models(models_dir, tiny_models(), names, "image")


def write_tiny_models(
    models_dir: Path, known: dict[str, TinyModel], names: Iterable[str] | None, kind: str
) -> list[str]:
    """Write each named model of ``known`` (default: all) into models_dir/<name>/, marked as
    tiny; ``kind`` names them in the error for an unknown name. Returns the names written."""
    selected = list(known if names is None else names)
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise ValueError(f"unknown tiny {kind} models: {unknown}; known: {list(known)}")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    diffusers.utils.logging.disable_progress_bar()  # no "Writing model shards" bars
    transformers.utils.logging.disable_progress_bar()
    try:
        for name in selected:
            _write_model(models_dir, name, known[name])
    finally:
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()
    return selected
