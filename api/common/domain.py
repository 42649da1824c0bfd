"""What a domain (images, videos, texts, agentic) tells the server about itself.

Each domain package exports one ``Domain``; ``api.domains.DOMAINS`` lists them, and
``create_app``, the job engine, ``/api/models``, ``/health``, the files route and
``python -m api tiny-models`` loop over that list. Nothing in ``api.common`` names a domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings

from api.common.jobs.schemas import Job

if TYPE_CHECKING:
    from api.common.jobs.runner import JobContext
    from api.common.services import Services


class ExtraWeightsInfo(BaseModel):
    name: str
    repo: str
    source: str | None
    present: bool
    tiny: bool


class WeightsInfo(BaseModel):
    """Where a model's weights come from on this server."""

    repo: str = Field(description="Hugging Face repo id (or the provider's model id).")
    source: str | None = Field(
        description="models_dir, hf_cache, download (on first use), or null: none to be had."
    )
    present: bool = Field(description="Whether they are on this machine now.")
    tiny: bool = Field(description="Tiny random weights (tests): outputs are noise.")
    extra: list[ExtraWeightsInfo] | None = Field(
        None, description="Other weights the model runs with (e.g. a detector)."
    )


class ModelInfo(BaseModel):
    """A model this server serves (GET /api/models); domains add their own fields."""

    name: str
    domain: str = Field(description="The domain, i.e. the route its jobs go to.")
    family: str
    modes: list[str] = Field(description="What it can do, chosen from a request's inputs.")
    external: bool = Field(description="Runs at a provider, not on this server's devices.")
    available: bool = Field(description="Whether this server can run it now.")
    reason: str | None = Field(description="Why not, and how to fix it; null when available.")
    defaults: dict[str, Any] = Field(description="What a request that leaves them out gets.")
    weights: WeightsInfo
    loaded_on: list[str] = Field(description="Devices where it is loaded now.")


@dataclass(frozen=True)
class OutputFile:
    """A file a job wrote, as its result names it."""

    url: str  # /api/files/<job id>/<name>
    path: str  # where it was written, in the client's form (DD_PATH_MAP applied)
    take_path: str | None = None  # its timestamped take, this job's own copy


@dataclass(frozen=True)
class Submission:
    """A request checked as at submit: what the job engine queues."""

    model: str
    request: dict[str, Any]  # as validated, defaults filled (JSON)
    queue: str  # common.jobs.store's DEVICE_QUEUE or EXTERNAL_QUEUE


@dataclass(frozen=True)
class Domain:
    """Everything the server needs to serve one domain."""

    kind: str  # the jobs' kind and the route under /api (e.g. "images")
    router: APIRouter  # its submit route(s), mounted under /api behind the API keys
    job: type[Job]  # its Job, request and result typed (common.jobs.schemas.job_model)
    model_info: type[ModelInfo]  # what GET /api/models says of each of its models
    describe_models: Callable[[Services], Sequence[ModelInfo]]  # each a model_info
    # Run a job of this kind on the context's device: the result (a pydantic model).
    run_job: Callable[[Services, Job, JobContext], BaseModel]
    # The files a succeeded job's result names (what GET /api/files serves).
    output_files: Callable[[dict[str, Any]], list[OutputFile]]
    # Its settings (DD_ variables), mixed into the server's Settings class, read and
    # validated with the rest at start-up; ``check_settings`` for what pydantic can't see.
    settings: type[BaseSettings] | None = None
    check_settings: Callable[[Any], None] | None = None
    # Before a runner's first job: what loads (and compiles) what the settings ask on the
    # runner's device, or None when they ask nothing.
    warm_up: Callable[[Services], Callable[[str], None] | None] | None = None
    # The modules that run its local models (they import torch, diffusers, transformers):
    # imported as a runner starts (DD_PRELOAD), not by its first job.
    model_modules: tuple[str, ...] = ()
    # python -m api tiny-models: the names it writes, and the builder (imports lazily).
    tiny_model_names: tuple[str, ...] = ()
    build_tiny_models: Callable[[Path, list[str] | None], list[str]] | None = None
    # Extra routes beside /api (e.g. an OpenAI-compatible /v1), behind the same API keys.
    extra_routers: tuple[tuple[str, APIRouter], ...] = field(default=())
    # POST /api/jobs/{id}/rerun: a request body of this kind checked exactly as its submit
    # route checks one (a pydantic ValidationError or an ApiError naming the field), or
    # None where its jobs can't be re-run.
    check_request: Callable[[Services, dict[str, Any]], Submission] | None = None
