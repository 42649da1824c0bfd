"""Compute devices: which ones the runners use, what /health says about them."""

from __future__ import annotations

import gc
import sys
from typing import Any

from api.common.settings import SettingsError


def compute_devices(setting: str) -> list[str]:
    """``DD_DEVICE`` → the devices that get a runner each (auto: every GPU, else the CPU)."""
    import torch

    if setting == "cpu":
        return ["cpu"]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == "auto":
        return [f"cuda:{i}" for i in range(available)] or ["cpu"]
    index = int(setting.split(":")[1]) if ":" in setting else 0
    if index >= available:
        raise SettingsError(
            f"invalid settings:\n  DD_DEVICE: {setting} asked for, but PyTorch sees "
            f"{available} CUDA device(s)"
        )
    return [f"cuda:{index}"]


def use_device(device: str) -> None:
    """Make ``device`` the calling thread's current CUDA device (each runner's thread, once),
    so that whatever resolves a plain "cuda" in it lands on the runner's own GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)


def describe(device: str) -> dict[str, Any]:
    """Name and memory of a device, for /health."""
    if not device.startswith("cuda"):
        return {"device": device, "name": "cpu"}
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return {
        "device": device,
        "name": torch.cuda.get_device_name(device),
        "memory_free_mb": free // 2**20,
        "memory_total_mb": total // 2**20,
        "memory_allocated_mb": torch.cuda.memory_allocated(device) // 2**20,
    }


def free_memory() -> None:
    """Give cached GPU memory back after a job (kept cheap when torch isn't loaded)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
