"""Tiny task models: the x4 upscaler, Depth Anything, Grounding DINO and SAM.

Each is saved with the library's own ``save_pretrained`` in the layout of the real repository,
so the task modules load it with the same ``from_pretrained`` calls as real weights:

- ``sd-x4-upscaler``: a ``StableDiffusionUpscalePipeline`` (UNet with 7 input channels, 4 latent
  + 3 low-res image, noise level as class label; 3-level VAE, scale factor 4, scaling 0.08333;
  DDIM v-prediction scheduler, DDPM low-res noise scheduler; OpenCLIP-style text encoder).
- ``depth-anything``: ``DepthAnythingForDepthEstimation`` on a tiny DINOv2 backbone, with the
  real repository's ``DPTImageProcessor`` settings (518 px, aspect kept, multiple of 14).
- ``grounding-dino``: ``GroundingDinoForObjectDetection`` (tiny Swin + tiny BERT) and its
  ``GroundingDinoProcessor``. The BERT WordPiece vocab keeps BERT's ids for ``[CLS]`` (101),
  ``[SEP]`` (102), ``.`` (1012) and ``?`` (1029): the model splits phrases on those ids.
- ``segment-anything``: ``SamModel`` and ``SamProcessor`` at a 256-px working size (the real
  SAM works at 1024; the size is configuration, so the same code serves both).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import (
    BertConfig,
    BertTokenizer,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessor,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    SamConfig,
    SamImageProcessor,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SwinConfig,
)

from api.common.tiny import TinyModel, corpus_words, seed
from api.images.models.tiny import _clip_text_encoder, _clip_tokenizer

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------------------------
# x4 upscaler
# ---------------------------------------------------------------------------------------------


def _upscaler(name: str, folder: Path) -> None:
    tokenizer = _clip_tokenizer(pad_token="!")  # OpenCLIP ViT-H pads with "!"
    text_encoder = _clip_text_encoder(
        name, "text_encoder", tokenizer, with_projection=False, hidden_act="gelu"
    )
    seed(name, "unet")
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=7,  # 4 latent channels + the 3-channel noised low-res image
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=32,
        use_linear_projection=True,
        num_class_embeds=1000,  # the noise level is the class label
    )
    seed(name, "vae")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # three levels: scale factor 4
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.08333,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    low_res_scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="scaled_linear",
        clip_sample=True,
        variance_type="fixed_small",
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        max_noise_level=350,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


# ---------------------------------------------------------------------------------------------
# Depth Anything V2
# ---------------------------------------------------------------------------------------------


def _depth_anything(name: str, folder: Path) -> None:
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=518,
        patch_size=14,
        # a backbone option the config takes through **kwargs, which its typed fields hide
        out_indices=[1, 2, 3, 4],  # type: ignore[call-arg]
        reshape_hidden_states=False,
        layerscale_value=1.0,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    seed(name, "model")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(
        do_resize=True,
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_pad=False,
    ).save_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# Grounding DINO
# ---------------------------------------------------------------------------------------------


def _bert_vocab() -> dict[str, int]:
    """A WordPiece vocab with bert-base-uncased's layout for the ids the model relies on:
    [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then the ASCII characters from 999
    ("." = 1012, "?" = 1029), then whole words and "##" pieces."""
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99))]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 99 + 999 - len(tokens))]
    tokens += [chr(c) for c in range(ord("!"), ord("~") + 1) if not chr(c).isupper()]
    tokens += [w for w in corpus_words() if w not in tokens]
    tokens += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return {token: index for index, token in enumerate(tokens)}


def _grounding_dino(name: str, folder: Path) -> None:
    vocab = _bert_vocab()
    assert (vocab["[CLS]"], vocab["[SEP]"], vocab["."], vocab["?"]) == (101, 102, 1012, 1029)
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
    backbone = SwinConfig(
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_indices=[2, 3, 4],  # type: ignore[call-arg]  # as for Dinov2Config
    )
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=20,
        encoder_layers=1,
        decoder_layers=2,  # the model ties its per-layer box heads: needs two or more
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
    )
    seed(name, "model")
    GroundingDinoForObjectDetection(config).save_pretrained(folder, safe_serialization=True)
    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": 800, "longest_edge": 1333},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        folder
    )


# ---------------------------------------------------------------------------------------------
# SAM
# ---------------------------------------------------------------------------------------------

_SAM_SIZE = 256


def _segment_anything(name: str, folder: Path) -> None:
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=_SAM_SIZE,
            patch_size=16,
            mlp_ratio=2.0,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=8,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=16, image_size=_SAM_SIZE, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16,
            mlp_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            iou_head_hidden_dim=16,
        ),
    )
    seed(name, "model")
    SamModel(config).save_pretrained(folder, safe_serialization=True)
    image_processor = SamImageProcessor(
        size={"longest_edge": _SAM_SIZE},
        pad_size={"height": _SAM_SIZE, "width": _SAM_SIZE},
        mask_size={"longest_edge": _SAM_SIZE // 4},
        mask_pad_size={"height": _SAM_SIZE // 4, "width": _SAM_SIZE // 4},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    SamProcessor(image_processor=image_processor).save_pretrained(folder)


TINY_MODELS: dict[str, TinyModel] = {
    "sd-x4-upscaler": TinyModel("stabilityai/stable-diffusion-x4-upscaler", _upscaler),
    "depth-anything": TinyModel("depth-anything/Depth-Anything-V2-Large-hf", _depth_anything),
    "grounding-dino": TinyModel("IDEA-Research/grounding-dino-base", _grounding_dino),
    "segment-anything": TinyModel("facebook/sam-vit-huge", _segment_anything),
}
