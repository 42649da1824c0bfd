"""What the domains share at run time: settings, the path policy, the model caches."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.common.devices import loaded_memory_limit, unloaded_models_ram
from api.common.errors import JobFailure
from api.common.models import ModelCache, Weights, find_weights, missing_weights_message
from api.common.paths import PathPolicy
from api.common.settings import ServerSettings

UPLOADS_FOLDER = "uploads"  # in the data dir


@dataclass
class Services:
    settings: ServerSettings
    paths: PathPolicy
    _caches: dict[str, ModelCache] = field(default_factory=dict)
    # The server's job engine (common.jobs.engine.JobEngine), set by create_app: what lets
    # one domain's job ask another domain for work (a job of its own, on its queue). None in
    # a device's worker process.
    jobs: Any = None
    # Models resident in the worker processes of devices whose jobs run there (or on the
    # workers of a distributed engine): device (worker) → names.
    _elsewhere: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Services:
        uploads = settings.resolved_data_dir / UPLOADS_FOLDER
        return cls(settings, PathPolicy(settings.roots, settings.path_map, uploads))

    @property
    def data_dir(self) -> Path:
        return self.settings.resolved_data_dir

    @property
    def uploads_dir(self) -> Path:
        """Where uploads and data URLs are saved: always an allowed input folder."""
        return self.data_dir / UPLOADS_FOLDER

    @property
    def models_dir(self) -> Path:
        return self.settings.resolved_models_dir

    def find_weights(
        self, name: str, repo: str, files: tuple[str, ...] | None = None
    ) -> Weights | None:
        """A model's weights: ``DD_MODELS_DIR/<name>/``, the Hugging Face cache, a download."""
        return find_weights(name, repo, self.models_dir, self.settings.downloads, files)

    def require_weights(
        self, name: str, repo: str, files: tuple[str, ...] | None = None
    ) -> Weights:
        """``find_weights``, or the job fails saying how to provide them."""
        weights = self.find_weights(name, repo, files)
        if weights is None:
            raise JobFailure(self.missing_weights(name, repo), type="model_unavailable")
        return weights

    def missing_weights(self, name: str, repo: str) -> str:
        """Why absent weights can't be had here, and how to provide them."""
        why = "HF_HUB_OFFLINE=1" if self.settings.allow_downloads else "DD_ALLOW_DOWNLOADS=false"
        return missing_weights_message(name, repo, self.models_dir, why)

    def model_cache(self, device: str) -> ModelCache:
        """The resident models of one device (each runner has its own)."""
        with self._lock:
            if device not in self._caches:
                self._caches[device] = ModelCache(
                    self.settings.max_loaded_models,
                    max_bytes=loaded_memory_limit(self.settings.max_loaded_memory, device),
                    park_bytes=self._park_bytes if device.startswith("cuda") else lambda _: 0,
                )
            return self._caches[device]

    def _park_bytes(self, parked: int) -> int:
        return unloaded_models_ram(self.settings.unloaded_models_ram, parked)

    def loaded_models(self) -> dict[str, list[str]]:
        """Model name → devices where it is loaded (cache keys start with the model name)."""
        loaded: dict[str, list[str]] = {}
        with self._lock:
            for device, cache in self._caches.items():
                for key in cache.keys():
                    if device not in loaded.setdefault(key.model, []):
                        loaded[key.model].append(device)
            for device, names in self._elsewhere.items():
                for name in names:
                    loaded.setdefault(name, []).append(device)
        return loaded

    def note_loaded(self, device: str, loaded: dict[str, list[str]]) -> None:
        """What a device's worker process reported resident (its ``loaded_models``)."""
        with self._lock:
            self._elsewhere[device] = sorted(loaded)

    def note_workers(self, loaded: dict[str, list[str]]) -> None:
        """What the live workers of a distributed engine keep resident: worker → names."""
        with self._lock:
            self._elsewhere = {worker: sorted(names) for worker, names in loaded.items()}
