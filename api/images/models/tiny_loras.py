"""Tiny LoRAs for the tiny diffusion models (python -m api tiny-models writes them into
``<dir>/loras/``, the default DD_LORAS_DIR): one per family, and a second SD 1.5 one to stack.

Each is made as a trainer makes one: PEFT's ``LoraConfig`` injected into the tiny model's
denoiser (and text encoders, where listed) as built by tiny.py, its state dict taken with
``get_peft_model_state_dict`` and written by the family's pipeline class with
``save_lora_weights``: diffusers' own format, shaped for the tiny models. Training leaves
``lora_B`` non-zero; here both matrices get seeded random values (``init_lora_weights=False``),
so a tiny LoRA visibly changes the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffusers import DiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from api.common.tiny import TinyModel, seed
from api.images.loras import SUFFIX
from api.images.models.tiny import (
    _flux_schnell,
    _stable_diffusion,
    _stable_diffusion_3,
    _stable_diffusion_xl,
)
from api.images.registry import LORAS_FOLDER

_RANK = 4
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
_JOINT_ATTENTION = [*_ATTENTION, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
_TEXT_ENCODER = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass(frozen=True)
class TinyLora:
    base: str  # the tiny model whose shapes it has
    make: Callable[[str], DiffusionPipeline]
    denoiser_modules: list[str]
    text_encoders: tuple[str, ...] = ()  # the pipeline's text encoders it adapts too


TINY_LORAS: dict[str, TinyLora] = {
    "tiny-sd15": TinyLora("sd1.5", _stable_diffusion, _ATTENTION),
    "tiny-sd15-b": TinyLora("sd1.5", _stable_diffusion, _ATTENTION, ("text_encoder",)),
    "tiny-sdxl": TinyLora(
        "sdxl", _stable_diffusion_xl, _ATTENTION, ("text_encoder", "text_encoder_2")
    ),
    "tiny-sd3": TinyLora("sd3", _stable_diffusion_3, _JOINT_ATTENTION),
    "tiny-flux": TinyLora("flux-schnell", _flux_schnell, [*_JOINT_ATTENTION, "proj_mlp"]),
}


def _write_lora(name: str, lora: TinyLora, folder: Path) -> None:
    pipe = lora.make(lora.base)
    denoiser = "unet" if hasattr(pipe, "unet") else "transformer"
    layers = {}
    for component, modules in [
        (denoiser, lora.denoiser_modules),
        *((encoder, _TEXT_ENCODER) for encoder in lora.text_encoders),
    ]:
        model = getattr(pipe, component)
        seed(name, component)
        config = LoraConfig(
            r=_RANK, lora_alpha=_RANK, target_modules=modules, init_lora_weights=False
        )
        inject_adapter_in_model(config, model)
        layers[f"{component}_lora_layers"] = get_peft_model_state_dict(model)
    type(pipe).save_lora_weights(folder, weight_name=f"{name}{SUFFIX}", **layers)


def _build(_: str, folder: Path) -> None:
    for name, lora in TINY_LORAS.items():
        _write_lora(name, lora, folder)


TINY_MODELS = {LORAS_FOLDER: TinyModel("LoRAs for the tiny diffusion models", _build)}
