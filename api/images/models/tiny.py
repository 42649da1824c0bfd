"""Tiny random-weight stand-ins for the image models the server serves.

Each model is written with ``DiffusionPipeline.save_pretrained``, the diffusers layout of the real
repositories (``model_index.json`` plus one subfolder per component, safetensors weights), so it
loads with e.g. ``AutoPipelineForText2Image.from_pretrained(folder)``. Architectures mirror the real
models (component classes, latent channels, VAE scale factor 8, conditioning wiring) at a few
dozen channels, so every folder is well under 5 MB and a 64x64 generation takes milliseconds on
CPU. Everything is built offline: tokenizers are generated in memory and weights come from
per-component seeds, so building twice gives byte-identical files.
"""

from collections.abc import Callable, Iterable
from pathlib import Path

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
)

from api.common.tiny import (
    TinyModel,
    byte_alphabet,
    corpus_words,
    learn_bpe_merges,
    saved_pipeline,
    seed,
    t5_text_encoder,
    t5_tokenizer,
    write_tiny_models,
)

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


_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_MAX_LENGTH = 77


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


def _clip_tokenizer(pad_token: str = _CLIP_EOS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer laid out like openai/clip: bytes, bytes + </w>, merges, specials."""
    alphabet = byte_alphabet()
    merges = learn_bpe_merges(corpus_words())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        # transformers annotates list[str], but hands merges to tokenizers' BPE, which takes
        # (left, right) pairs
        merges=merges,  # type: ignore[arg-type]
        pad_token=pad_token,
        model_max_length=_CLIP_MAX_LENGTH,
    )


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
    seed(model, component)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config)


def _vae(
    model: str,
    *,
    latent_channels: int,
    scaling_factor: float,
    shift_factor: float | None = None,
) -> AutoencoderKL:
    """Four levels like the real VAEs (scale factor 8); 16-channel ones drop the quant convs."""
    has_quant_convs = latent_channels == 4
    seed(model, "vae")
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
    seed(model, "unet")
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
    seed(model, "unet")
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
    tokenizer_3 = t5_tokenizer()
    text_encoder = _clip_text_encoder(model, "text_encoder", tokenizer, with_projection=True)
    text_encoder_2 = _clip_text_encoder(
        model, "text_encoder_2", tokenizer_2, with_projection=True, hidden_act="gelu"
    )
    # T5 width 64 holds the two CLIP hidden states side by side (as 4096 holds 768 + 1280).
    text_encoder_3 = t5_text_encoder(model, "text_encoder_3", tokenizer_3, d_model=64)
    seed(model, "transformer")
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
    tokenizer_2 = t5_tokenizer()
    text_encoder = _clip_text_encoder(model, "text_encoder", tokenizer, with_projection=False)
    text_encoder_2 = t5_text_encoder(model, "text_encoder_2", tokenizer_2, d_model=32)
    seed(model, "transformer")
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
    add (ControlNets and IP-Adapters in tiny_adapters, task models in tiny_tasks, the LoRAs'
    folder in tiny_loras)."""
    from api.images.models import tiny_adapters, tiny_loras, tiny_tasks

    models = {
        name: TinyModel(TINY_IMAGE_MODELS[name], saved_pipeline(make))
        for name, make in _PIPELINE_BUILDERS.items()
    }
    return models | tiny_adapters.TINY_MODELS | tiny_tasks.TINY_MODELS | tiny_loras.TINY_MODELS


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def build_tiny_image_models(models_dir: Path, names: Iterable[str] | None = None) -> list[str]:
    """Write a tiny random-weight copy of each named image model into models_dir/<name>/.

    ``names`` defaults to every tiny model (``tiny_models()``). Returns the names written.
    """
    return write_tiny_models(models_dir, tiny_models(), names, "image")
