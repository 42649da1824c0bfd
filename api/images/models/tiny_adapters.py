"""Tiny ControlNets and IP-Adapters (with their image encoder) for the diffusion families."""

from __future__ import annotations

from api.images.models.tiny import TinyModel

TINY_MODELS: dict[str, TinyModel] = {}
