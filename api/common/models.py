"""Where model weights come from, and the cache that keeps loaded models resident."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("api.models")

TINY_MARKER = "tiny.json"  # in a weights folder: tiny random weights (tests)
T = TypeVar("T")
_MAIN_FILES = ("model_index.json", "config.json")


@dataclass(frozen=True)
class CacheKey:
    """What a device's ModelCache keeps a loaded model under."""

    model: str  # the model's (or component's) name: /api/models shows it loaded
    part: str = ""  # which part of it, e.g. "image_encoder" (empty: the model itself)
    offloaded: bool = False  # loaded for CPU offload (optimize_low_vram): idle parts on the CPU
    variant: str = ""  # anything else that makes it another object, e.g. a dtype

    def __str__(self) -> str:
        name = "/".join(part for part in (self.model, self.part) if part)
        details = [detail for detail in (self.variant, "offloaded" * self.offloaded) if detail]
        return f"{name} ({', '.join(details)})" if details else name


@dataclass(frozen=True)
class Weights:
    """A model's weights: a local folder, or a Hugging Face repo id to download."""

    source: str  # "models_dir" | "hf_cache" | "download"
    location: str  # a folder, or the repo id for "download"
    tiny: bool = False


def _local_folder(models_dir: Path, name: str, files: tuple[str, ...]) -> Path | None:
    folder = models_dir / name
    return folder if any((folder / f).is_file() for f in files) else None


def _hf_cache_folder(repo: str, files: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in files:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found).parents[filename.count("/")]  # the snapshot's root
    return None


def find_weights(
    name: str,
    repo: str,
    models_dir: Path,
    downloads: bool,
    files: tuple[str, ...] | None = None,
) -> Weights | None:
    """``DD_MODELS_DIR/<name>/``, then the Hugging Face cache, then a download (if
    ``downloads``: see ServerSettings.downloads).

    A folder counts when it has one of ``files`` (default: model_index.json or config.json;
    repos laid out otherwise, like h94/IP-Adapter, name a file of theirs).
    """
    files = files or _MAIN_FILES
    folder = _local_folder(models_dir, name, files)
    if folder is not None:
        return Weights("models_dir", str(folder), (folder / TINY_MARKER).is_file())
    cached = _hf_cache_folder(repo, files)
    if cached is not None:
        return Weights("hf_cache", str(cached), (cached / TINY_MARKER).is_file())
    if downloads:
        return Weights("download", repo)
    return None


def missing_weights_message(name: str, repo: str, models_dir: Path, why: str) -> str:
    """Why weights ``find_weights`` did not find can't be had (``why`` downloads are off),
    and how to provide them."""
    folder = models_dir / name
    return (
        f"weights for {name!r} ({repo}) are not on this machine (looked in {folder} and the "
        f"Hugging Face cache) and downloads are off ({why}). Get them with `hf download {repo} "
        f"--local-dir {folder}` (on a machine with network, then copy the folder here), or "
        "allow downloads (DD_ALLOW_DOWNLOADS=true, HF_HUB_OFFLINE unset)"
    )


def tiny_info(folder: Path) -> dict[str, Any] | None:
    marker = folder / TINY_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


# diffusers and transformers build a model inside context managers that patch torch for the
# whole process while they run (nn.Module.register_parameter to make meta tensors, the
# torch.nn.init functions to no-ops), so two models built at once in two threads corrupt
# each other ("Cannot copy out of meta tensor"), and so would an IP-Adapter's layers built
# during another device's load. Every construction of model modules holds this lock.
_building = threading.RLock()


@contextlib.contextmanager
def building_models(device: str) -> Iterator[None]:
    """Hold while building or changing a model's modules (``from_pretrained``, adapters).
    On CUDA the thread's current device is ``device`` meanwhile: diffusers resolves
    ``device_map="cuda"`` to it (see common.pipelines for transformers)."""
    with _building:
        if not device.startswith("cuda"):
            yield
            return
        import torch

        with torch.cuda.device(device):
            yield


class ModelCache:
    """Loaded models kept resident, least recently used evicted first.

    Bounded by a count (DD_MAX_LOADED_MODELS), by the bytes of the resident models' weights
    (DD_MAX_LOADED_MEMORY) and, on CUDA, by free memory: before a load, older entries are
    evicted while the device has less free memory than the new model needs.

    An evicted model that can ``park()`` (move its weights from a GPU to host RAM, keeping its
    compiled code) is kept there while ``park_bytes(bytes parked already)`` allows
    (DD_UNLOADED_MODELS_RAM; 0 for the CPU): the next request for it moves it back with
    ``unpark(device)``, with no read from disk and no compilation.

    A load holds no lock of the cache (``keys`` answers meanwhile), only the process-wide
    build lock. One runner thread uses a device's cache, so the same key is never loaded
    twice at once.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int | None = None,
        park_bytes: Callable[[int], int] = lambda parked: 0,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.park_bytes = park_bytes
        self._entries: OrderedDict[CacheKey, Any] = OrderedDict()
        self._sizes: dict[CacheKey, int] = {}
        self._parked: OrderedDict[CacheKey, Any] = OrderedDict()
        self._lock = threading.Lock()

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    def parked(self) -> list[CacheKey]:
        """Models moved to host RAM, least recently used first."""
        with self._lock:
            return list(self._parked)

    def resident_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.get(key, 0) for key in self._entries)

    def get(
        self, key: CacheKey, load: Callable[[], T], needed_bytes: int = 0, device: str = "cpu"
    ) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            parked = self._parked.pop(key, None)
        self._make_room(needed_bytes, device)
        if parked is not None:
            log.info("moving %s back onto %s", key, device)

            def load() -> T:
                parked.unpark(device)
                return parked

        else:
            log.info("loading %s on %s", key, device)
        out_of_memory = False
        try:
            with building_models(device):
                value = load()
        except Exception as exc:
            if type(exc).__name__ != "OutOfMemoryError" or not len(self):
                raise
            out_of_memory = True
        if out_of_memory:
            # The free-memory estimate was short (activations, fragmentation): unload
            # every other model of this device and try once more (outside the except
            # block, so the failed attempt's tensors are gone with its traceback).
            log.warning("out of memory loading %s: unloading %s", key, self.keys())
            while len(self):
                self._evict_oldest(device)
            with building_models(device):
                value = load()
        with self._lock:
            self._entries[key] = value
            self._sizes[key] = needed_bytes
        return value

    def _make_room(self, needed_bytes: int, device: str) -> None:
        while len(self) >= self.max_entries:
            self._evict_oldest(device)
        if self.max_bytes is not None:
            while len(self) and self.resident_bytes() + needed_bytes > self.max_bytes:
                self._evict_oldest(device)
        while needed_bytes and len(self) and _free_bytes(device) < needed_bytes:
            self._evict_oldest(device)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _evict_oldest(self, device: str = "cpu") -> None:
        with self._lock:
            key, model = self._entries.popitem(last=False)
            size = self._sizes.pop(key, 0)
        parked = self._parked_bytes()
        budget = self.park_bytes(parked) if callable(getattr(model, "park", None)) else 0
        if 0 < size <= budget:
            while self._parked and parked + size > budget:
                self._drop_oldest_parked()
                parked = self._parked_bytes()
            model.park()
            log.info("unloading %s from %s, kept in RAM", key, device)
            with self._lock:
                self._parked[key] = model
                self._sizes[key] = size
            from api.common.devices import free_memory

            free_memory()
            return
        self._release(key, model)

    def _parked_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.get(key, 0) for key in self._parked)

    def _drop_oldest_parked(self) -> None:
        with self._lock:
            key, model = self._parked.popitem(last=False)
            self._sizes.pop(key, 0)
        self._release(key, model)

    def _release(self, key: CacheKey, model: Any) -> None:
        release = getattr(model, "release", None)
        if callable(release):
            release()
        del model, release  # the last references: free_memory can give the memory back
        log.info("evicting %s", key)
        from api.common.devices import free_memory

        free_memory()


def _free_bytes(device: str) -> int:
    if not device.startswith("cuda"):
        return 1 << 62
    import torch

    return torch.cuda.mem_get_info(device)[0]


def folder_size(folder: str) -> int:
    """Bytes of weight files under a local folder (0 for a download not yet made)."""
    path = Path(folder)
    if not path.is_dir():
        return 0
    return sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.suffix in (".safetensors", ".bin") and f.is_file()
    )
