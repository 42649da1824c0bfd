"""Tiny random-weight stand-ins for the local video models.

Each is written with ``DiffusionPipeline.save_pretrained`` in the layout of the real repository
(``model_index.json`` plus one subfolder per component), so the real pipeline classes load it
with ``from_pretrained``. The architectures keep what the registry's rules depend on: the same
component classes, latent channels, spatial and temporal VAE compression and transformer patch
sizes (so the real size multiples and frame-count rules hold), the same conditioning wiring
(CLIP image embeddings, T5/UMT5 text, CogVideoX 1.5's ofs embedding and temporal patches) and
the same schedulers, at a few dozen channels: each folder is a few MB and 2 steps at the
smallest valid size and frame count take a second or two on a CPU. Built offline and
deterministically, with the shared tokenizers and seeding (api.common.tiny).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLLTXVideo,
    AutoencoderKLTemporalDecoder,
    AutoencoderKLWan,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    UMT5Config,
    UMT5EncoderModel,
)

from api.common.tiny import (
    TinyModel,
    saved_pipeline,
    seed,
    t5_text_encoder,
    t5_tokenizer,
    write_tiny_models,
)
from api.videos.registry import VIDEO_MODELS

# Width of the tiny text encoders (T5 v1.1 / UMT5 stand-ins) and of the CLIP image encoders.
_TEXT_WIDTH = 32
_IMAGE_WIDTH = 32


def _clip_vision(
    model: str, model_class: type, *, image_size: int, patch_size: int
) -> CLIPVisionModel | CLIPVisionModelWithProjection:
    """A 2-layer CLIP ViT standing in for OpenCLIP ViT-H/14 (SVD's and Wan's image encoder)."""
    config = CLIPVisionConfig(
        hidden_size=_IMAGE_WIDTH,
        intermediate_size=2 * _IMAGE_WIDTH,
        projection_dim=_IMAGE_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act="gelu",
    )
    seed(model, "image_encoder")
    return model_class(config)


def _stable_video_diffusion(model: str) -> DiffusionPipeline:
    """SVD-XT: a spatio-temporal UNet on 4 latent + 4 image-latent channels, cross-attending to
    the CLIP image embedding and conditioned on (fps, motion bucket, noise strength); a VAE
    with 8x downsampling and a temporal decoder (GroupNorm: 32-channel multiples)."""
    seed(model, "unet")
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=_IMAGE_WIDTH,
        num_attention_heads=(2, 2),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=3 * 8,
        num_frames=25,
    )
    seed(model, "vae")
    vae = AutoencoderKLTemporalDecoder(
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
    # SVD resizes the input to 224 px for CLIP itself; the processor only normalises.
    image_encoder = _clip_vision(
        model, CLIPVisionModelWithProjection, image_size=224, patch_size=32
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(),
    )


def _cogvideox(model: str) -> DiffusionPipeline:
    """CogVideoX 1.5 I2V: 16 latent channels doubled by the image latents, 2x2x2 patches
    (patch_size_t: latent frames padded to even), 3D RoPE sliced from a 300x300 grid, the ofs
    embedding, no patch bias; a causal 3D VAE with 8x spatial and 4x temporal compression
    whose latents are divided (not multiplied) by the scaling factor."""
    tokenizer = t5_tokenizer(model_max_length=226)
    text_encoder = t5_text_encoder(model, "text_encoder", tokenizer, d_model=_TEXT_WIDTH)
    seed(model, "transformer")
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # RoPE splits each head 4/6/6 over frames/height/width
        in_channels=32,
        out_channels=16,
        time_embed_dim=16,
        ofs_embed_dim=16,  # added to the time embedding: the same width
        text_embed_dim=_TEXT_WIDTH,
        num_layers=2,  # two: step_cache keeps the first block and skips the rest
        sample_width=300,
        sample_height=300,
        sample_frames=81,
        patch_size=2,
        patch_size_t=2,
        temporal_compression_ratio=4,
        max_text_seq_length=226,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
        patch_bias=False,
    )
    seed(model, "vae")
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        scaling_factor=0.7,
        invert_scale_latents=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = CogVideoXDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=1.0,
        timestep_spacing="trailing",
    )
    return CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


def _ltx_video(model: str) -> DiffusionPipeline:
    """LTX-Video 0.9: 128 latent channels, 1x1x1 transformer patches; the VAE patchifies 4x4
    pixels then halves space and time three times (32x spatial, 8x temporal). One folder
    (LTXPipeline, as the real repo) serves text→video and, through from_pipe, image→video."""
    tokenizer = t5_tokenizer(model_max_length=128)
    text_encoder = t5_text_encoder(model, "text_encoder", tokenizer, d_model=_TEXT_WIDTH)
    seed(model, "transformer")
    transformer = LTXVideoTransformer3DModel(
        in_channels=128,
        out_channels=128,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=2,  # two: step_cache keeps the first block and skips the rest
        caption_channels=_TEXT_WIDTH,
        qk_norm="rms_norm_across_heads",
    )
    seed(model, "vae")
    vae = AutoencoderKLLTXVideo(
        latent_channels=128,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    return LTXPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _wan(model: str) -> DiffusionPipeline:
    """Wan 2.1 I2V: 16 noise + 4 mask + 16 image-latent channels in, 1x2x2 patches, UMT5 text
    (512 tokens) and the CLIP image tokens through added key/value projections; the causal 3D
    VAE compresses 8x in space and 4x in time; UniPC on flow sigmas (shift 3 for 480P)."""
    tokenizer = t5_tokenizer(model_max_length=512)
    seed(model, "text_encoder")
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=_TEXT_WIDTH,
            d_kv=8,
            d_ff=2 * _TEXT_WIDTH,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    image_encoder = _clip_vision(model, CLIPVisionModel, image_size=32, patch_size=8)
    heads, head_width = 2, 12  # RoPE splits each head 4/4/4 over frames/height/width
    seed(model, "transformer")
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_width,
        in_channels=36,
        out_channels=16,
        text_dim=_TEXT_WIDTH,
        freq_dim=256,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=_IMAGE_WIDTH,
        added_kv_proj_dim=heads * head_width,
        rope_max_seq_len=1024,
    )
    seed(model, "vae")
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
    )
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        image_encoder=image_encoder,
        transformer=transformer,
    )


_PIPELINE_BUILDERS = {
    "stable-video-diffusion": _stable_video_diffusion,
    "cogvideox": _cogvideox,
    "ltx-video": _ltx_video,
    "wan-2.1": _wan,
}


def tiny_video_models() -> dict[str, TinyModel]:
    """Every local video model's tiny stand-in, by model name."""
    return {
        name: TinyModel(VIDEO_MODELS[name].repo, saved_pipeline(make))
        for name, make in _PIPELINE_BUILDERS.items()
    }


def build_tiny_video_models(models_dir: Path, names: Iterable[str] | None = None) -> list[str]:
    """Write a tiny random-weight copy of each named local video model (default: all) into
    models_dir/<name>/. Returns the names written."""
    return write_tiny_models(models_dir, tiny_video_models(), names, "video")
