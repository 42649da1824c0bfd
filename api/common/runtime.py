"""The model contract every domain's model code follows, and the runtime it runs with.

A domain's model families (``api/<domain>/models/<family>.py``) each provide ``run(context,
runtime)``: build the model's inputs from the domain's run context, call the model, return
its outputs and timings. Models are loaded through ``runtime.resident`` (once per device,
kept in the device's ``ModelCache``, built under the process-wide build lock) and released
when the cache evicts them (a value with a ``release()`` method gets it called first).
Progress and cancellation go through ``runtime.progress`` (which raises ``JobCancelled``
when the job was cancelled) and ``runtime.check_cancelled``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from api.common.models import CacheKey, ModelCache, Weights, folder_size
from api.common.services import Services

if TYPE_CHECKING:
    import torch

ContextT = TypeVar("ContextT", contravariant=True)
OutputT = TypeVar("OutputT", covariant=True)
T = TypeVar("T")


class ProgressReport(Protocol):
    """A job's progress hook: ``(step, total)``, plus details a model reports (``text``: the
    answer so far; ``status``: a provider's). Raises JobCancelled for a cancelled job."""

    def __call__(self, step: int, total: int, **detail: str) -> None: ...


def no_progress(step: int, total: int, **detail: str) -> None:
    """Progress nobody follows (a warm-up's)."""


def not_cancelled() -> None:
    """The cancel check of work nobody can cancel (a warm-up's)."""


class ModelFamily(Protocol, Generic[ContextT, OutputT]):
    """One family of models of a domain (e.g. the diffusion families of images)."""

    def run(self, context: ContextT, runtime: ModelRuntime) -> tuple[OutputT, dict[str, float]]:
        """Run the job's model on ``context``: its outputs and timings (seconds by name)."""
        ...


@dataclass
class ModelRuntime:
    """What model code gets besides the job's own inputs: the device and its precision, the
    device's resident models, the weights finder (which remembers whether tiny weights were
    used), seeded generators, and the job's progress and cancel hooks. Model code notes in
    ``precision`` what its diffusion model computed in (the job's result records it)."""

    services: Services
    device: str
    progress: ProgressReport = no_progress
    check_cancelled: Callable[[], None] = not_cancelled
    used: list[Weights] = field(default_factory=list)
    precision: str | None = None

    @property
    def cache(self) -> ModelCache:
        return self.services.model_cache(self.device)

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype(self) -> torch.dtype:
        """float32 on the CPU. On CUDA, ``DD_PRECISION``: ``auto`` is bf16 on GPUs that have
        it (no fp16 overflow: e.g. SDXL's VAE needs no float32 upcast), else fp16; ``fp8``
        computes in bf16 around the denoisers' FP8 linear layers (``Speed.fp8``)."""
        import torch

        precision = self.services.settings.precision
        if not self.on_gpu:
            return torch.float32
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}[precision]

    def weights(self, name: str, repo: str, files: tuple[str, ...] | None = None) -> Weights:
        """A model's weights (the job fails if they can't be had), noted as used."""
        found = self.services.require_weights(name, repo, files)
        self.used.append(found)
        return found

    @property
    def tiny(self) -> bool:
        """Whether any weights this job used are tiny random ones (tests)."""
        return any(weights.tiny for weights in self.used)

    def resident(self, key: CacheKey, load: Callable[[], T], weights: Weights | None = None) -> T:
        """The device's loaded ``key``, loading it with ``load`` the first time (older models
        are unloaded first while the device lacks the room ``weights`` need)."""
        needed = 0 if weights is None or key.offloaded else folder_size(weights.location)
        return self.cache.get(key, load, needed_bytes=needed, device=self.device)

    def generator(self, seed: int) -> Any:
        """A CPU generator seeded with ``seed``: the same noise on any device."""
        import torch

        return torch.Generator("cpu").manual_seed(seed)
