"""Compute devices: which ones the runners use, what /health says about them."""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api.common.settings import SettingsError, memory_bytes

log = logging.getLogger("api.devices")

# Host RAM left free for everything else when models unloaded from a GPU are kept in RAM.
RAM_RESERVE = 4 * 2**30


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


def check_precision(precision: str, devices: list[str]) -> None:
    """DD_PRECISION=fp8 only where every device that runs models has FP8 matmuls (CUDA
    compute capability 8.9 or newer); else the server or worker does not start."""
    if precision != "fp8":
        return
    from api.common.fp8 import FP8_CAPABILITY, fp8_capable

    lacking = [device for device in devices if not fp8_capable(device)]
    if not lacking:
        return
    import torch

    described = [
        f"{device} ({torch.cuda.get_device_name(device)}, compute capability "
        f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))})"
        if device.startswith("cuda")
        else f"{device} (no FP8 matmuls)"
        for device in lacking
    ]
    raise SettingsError(
        "invalid settings:\n  DD_PRECISION: fp8 needs CUDA GPUs of compute capability "
        f"{'.'.join(map(str, FP8_CAPABILITY))} or newer (Ada, Hopper and later), but models "
        f"would run on {', '.join(described)}; use DD_PRECISION=auto (bf16)"
    )


def use_device(device: str) -> None:
    """Make ``device`` the calling thread's current CUDA device (each runner's thread, once),
    so that whatever resolves a plain "cuda" in it lands on the runner's own GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)


def preload(modules: Sequence[str], device: str) -> None:
    """What a device's first job would otherwise wait for (DD_PRELOAD): the model modules
    imported (torch, diffusers, transformers with them) and, on a GPU, its CUDA context and
    matrix library opened."""
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # its jobs fail later, clearly; the rest of the start goes on
            log.exception("%s: could not import %s", device, name)
    if device.startswith("cuda"):
        import torch

        square = torch.ones(64, 64, device=device)  # float32: every GPU has it
        (square @ square).sum().item()
    log.info(
        "%s: model libraries imported%s in %.1f s",
        device,
        " and the GPU opened" if device.startswith("cuda") else "",
        time.perf_counter() - started,
    )


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


def loaded_memory_limit(setting: str | None, device: str) -> int | None:
    """DD_MAX_LOADED_MEMORY for ``device`` in bytes (a share of its memory: the GPU's, or
    the machine's RAM for the CPU); None when unset."""
    if setting is None:
        return None
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = _ram().get("MemTotal", 0)
    return memory_bytes(setting, total)


def unloaded_models_ram(setting: str, parked: int) -> int:
    """How many bytes of models unloaded from GPUs host RAM may hold now (``parked`` of them
    held already): DD_UNLOADED_MODELS_RAM, never more than what the machine has available
    less RAM_RESERVE. 0 where the machine's RAM can't be read (Linux's /proc/meminfo)."""
    ram = _ram()
    if "MemAvailable" not in ram:
        return 0
    wanted = memory_bytes(setting, ram["MemTotal"])
    return max(0, min(wanted, ram["MemAvailable"] + parked - RAM_RESERVE))


def _ram() -> dict[str, int]:
    """/proc/meminfo's sizes in bytes (empty where there is none)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    sizes = {}
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            sizes[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return sizes
