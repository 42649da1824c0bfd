"""Tiny ControlNets and IP-Adapters (with their image encoder) for the diffusion families.

ControlNets are written with ``save_pretrained`` (config.json and
diffusion_pytorch_model.safetensors, the layout of the real repos) and fit the tiny base models of
tiny.py: the SD 1.5 and SDXL ones are ``ControlNetModel.from_unet`` of a UNet built like the
family's; the SD3 and Flux ones have the tiny transformers' widths (Flux: XLabs' layout, with the
convolutional hint block and two double-stream blocks). A ControlNet starts with zeroed output
layers that training grows; these get small random values instead, so a tiny ControlNet steers.

The IP-Adapter folder has the h94/IP-Adapter layout: models/image_encoder (a tiny
CLIPVisionModelWithProjection standing in for OpenCLIP ViT-H/14, shared by both families as the
real one is) and the six adapter files of registry.IP_ADAPTERS, in the original format that
diffusers' ``load_ip_adapter`` converts: ``image_proj.*`` (plain: a linear projection of the image
embedding to 4 tokens; plus and face: a Resampler over the encoder's penultimate hidden states)
and ``ip_adapter.<n>.to_k_ip/to_v_ip`` for every cross-attention layer ``n`` of the family's tiny
UNet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    FluxControlNetModel,
    SD3ControlNetModel,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from api.common.tiny import TinyModel, seed
from api.images.models.tiny import _sdxl_unet, _stable_diffusion
from api.images.registry import (
    CONTROLNETS,
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_WEIGHTS,
    IP_ADAPTERS,
    IpAdapterKind,
)

# Standard deviation of the values given to the layers a ControlNet starts with at zero.
_ZERO_LAYER_STD = 0.2

# The image encoder: ViT-H/14 is 1280 wide and projects to 1024; these differ likewise.
_ENCODER_WIDTH = 32
_ENCODER_PROJECTION = 24
# Resampler (plus/face adapters): its own width; attention heads are 64 wide, as diffusers
# reads the head count from the query rows / 64; 16 query tokens as the real ones.
_RESAMPLER_WIDTH = 48
_RESAMPLER_HEADS = 1
_RESAMPLER_QUERIES = 16
_RESAMPLER_DEPTH = 4


def _sd15_unet(name: str) -> UNet2DConditionModel:
    return _stable_diffusion(name).unet


def _sdxl_base_unet(name: str) -> UNet2DConditionModel:
    return _sdxl_unet(name, cross_attention_dim=64, add_time_ids=6)


_UNETS: dict[str, Callable[[str], UNet2DConditionModel]] = {
    "sd1.5": _sd15_unet,
    "sdxl": _sdxl_base_unet,
}


def _make_it_steer(controlnet: torch.nn.Module, name: str) -> None:
    """Random weights barely steer: the zeroed output layers pass nothing, and the control
    image's convolutional encoder (default init) shrinks its signal a thousandfold. So the
    zeroed layers get small random values and that encoder variance-keeping (Kaiming) ones."""
    seed(name, "steer")
    hint = getattr(controlnet, "controlnet_cond_embedding", None) or getattr(
        controlnet, "input_hint_block", None
    )
    with torch.no_grad():
        for parameter in controlnet.parameters():
            if not parameter.any():
                parameter.normal_(0.0, _ZERO_LAYER_STD)
        for module in hint.modules() if hint is not None else ():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def _unet_controlnet(family: str) -> Callable[[str, Path], None]:
    def build(name: str, folder: Path) -> None:
        controlnet = ControlNetModel.from_unet(
            _UNETS[family](name), conditioning_embedding_out_channels=(8, 8, 16, 16)
        )
        _make_it_steer(controlnet, name)
        controlnet.save_pretrained(folder, safe_serialization=True)

    return build


def _sd3_controlnet(name: str, folder: Path) -> None:
    """InstantX's SD3 ControlNets: fewer joint blocks than the transformer, same widths."""
    seed(name, "controlnet")
    controlnet = SD3ControlNetModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=64,
    )
    _make_it_steer(controlnet, name)
    controlnet.save_pretrained(folder, safe_serialization=True)


def _flux_controlnet(name: str, folder: Path) -> None:
    """XLabs' Flux ControlNets: a convolutional hint block (control image → 16 channels at 1/8,
    2x2 patches = the packed latents' 64), two double-stream blocks, guidance embedding."""
    seed(name, "controlnet")
    controlnet = FluxControlNetModel(
        patch_size=2,
        in_channels=64,
        num_layers=2,
        num_single_layers=0,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
        conditioning_embedding_channels=16,
    )
    _make_it_steer(controlnet, name)
    controlnet.save_pretrained(folder, safe_serialization=True)


_CONTROLNET_BUILDERS: dict[str, Callable[[str, Path], None]] = {
    "sd1.5": _unet_controlnet("sd1.5"),
    "sdxl": _unet_controlnet("sdxl"),
    "sd3": _sd3_controlnet,
    "flux": _flux_controlnet,
}


# ---------------------------------------------------------------------------------------------
# IP-Adapter
# ---------------------------------------------------------------------------------------------


def _linear(rows: int, columns: int) -> torch.Tensor:
    return torch.randn(rows, columns) / columns**0.5


def _layer_norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.ones(width), f"{prefix}.bias": torch.zeros(width)}


def _image_projection(cross_attention_dim: int) -> dict[str, torch.Tensor]:
    """Plain IP-Adapter: the image embedding → 4 tokens of the UNet's cross-attention width."""
    return {
        "proj.weight": _linear(4 * cross_attention_dim, _ENCODER_PROJECTION),
        "proj.bias": torch.zeros(4 * cross_attention_dim),
        **_layer_norm("norm", cross_attention_dim),
    }


def _resampler(cross_attention_dim: int) -> dict[str, torch.Tensor]:
    """IP-Adapter Plus (and Plus Face): a Perceiver resampler in the original key layout."""
    width, inner = _RESAMPLER_WIDTH, 64 * _RESAMPLER_HEADS
    tensors = {
        "latents": torch.randn(1, _RESAMPLER_QUERIES, width) / width**0.5,
        "proj_in.weight": _linear(width, _ENCODER_WIDTH),
        "proj_in.bias": torch.zeros(width),
        "proj_out.weight": _linear(cross_attention_dim, width),
        "proj_out.bias": torch.zeros(cross_attention_dim),
        **_layer_norm("norm_out", cross_attention_dim),
    }
    for i in range(_RESAMPLER_DEPTH):
        attention, feed_forward = f"layers.{i}.0", f"layers.{i}.1"
        tensors |= {
            **_layer_norm(f"{attention}.norm1", width),
            **_layer_norm(f"{attention}.norm2", width),
            f"{attention}.to_q.weight": _linear(inner, width),
            f"{attention}.to_kv.weight": _linear(2 * inner, width),
            f"{attention}.to_out.weight": _linear(width, inner),
            **_layer_norm(f"{feed_forward}.0", width),
            f"{feed_forward}.1.weight": _linear(4 * width, width),
            f"{feed_forward}.3.weight": _linear(width, 4 * width),
        }
    return tensors


def _ip_layers(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """Image key/value projections for each cross-attention layer, numbered by the layer's place
    among all the UNet's attention processors (as the original IP-Adapter code numbers them)."""
    tensors = {}
    for index, processor in enumerate(unet.attn_processors):
        if processor.endswith("attn2.processor"):
            to_k = unet.get_submodule(processor.removesuffix(".processor")).to_k.weight
            tensors[f"{index}.to_k_ip.weight"] = _linear(*to_k.shape)
            tensors[f"{index}.to_v_ip.weight"] = _linear(*to_k.shape)
    return tensors


def _ip_adapter(name: str, folder: Path) -> None:
    seed(name, "image_encoder")
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=_ENCODER_WIDTH,
            intermediate_size=2 * _ENCODER_WIDTH,
            projection_dim=_ENCODER_PROJECTION,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="gelu",
        )
    )
    encoder.save_pretrained(folder / IP_ADAPTER_IMAGE_ENCODER, safe_serialization=True)
    unets = {family: make(name) for family, make in _UNETS.items()}
    for (family, kind), (subfolder, weight_name) in IP_ADAPTERS.items():
        unet = unets[family]
        seed(name, f"{subfolder}/{weight_name}")
        cross_attention_dim = unet.config.cross_attention_dim
        projection = (
            _image_projection(cross_attention_dim)
            if kind == IpAdapterKind.style
            else _resampler(cross_attention_dim)
        )
        tensors = {f"image_proj.{key}": value for key, value in projection.items()}
        tensors |= {f"ip_adapter.{key}": value for key, value in _ip_layers(unet).items()}
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        save_file(
            {key: value.contiguous() for key, value in tensors.items()},
            folder / subfolder / weight_name,
        )


TINY_MODELS: dict[str, TinyModel] = {
    name: TinyModel(repo, _CONTROLNET_BUILDERS[family])
    for (family, _kind), (name, repo) in CONTROLNETS.items()
} | {IP_ADAPTER_WEIGHTS[0]: TinyModel(IP_ADAPTER_WEIGHTS[1], _ip_adapter)}
