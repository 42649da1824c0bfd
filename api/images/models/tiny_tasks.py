"""Tiny task models: the x4 upscaler, Depth Anything, Grounding DINO and SAM."""

from __future__ import annotations

from api.images.models.tiny import TinyModel

TINY_MODELS: dict[str, TinyModel] = {}
