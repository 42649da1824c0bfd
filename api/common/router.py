"""HTTP shared by every domain: health, the model list, file upload and download."""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api import __version__
from api.common.devices import describe
from api.common.domain import Domain, ModelInfo
from api.common.errors import (
    InvalidField,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    error_responses,
)
from api.common.files import WriteFolder, open_regular_file, served_path
from api.common.media import MEDIA_TYPES, check_image_file, image_suffix
from api.common.retention import DataDirUsage
from api.common.services import Services
from api.common.signing import FILES_PREFIX

MAX_UPLOAD_BYTES = 2**30  # a 4K float EXR plate is ~150 MB
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".exr")

router = APIRouter()
health_router = APIRouter()

# A download's signed link (see api.common.signing), checked by require_api_key.
SIGNED_LINK_PARAMETERS = [
    {
        "name": "expires",
        "in": "query",
        "required": False,
        "description": "Signed link: its expiry, in unix time (with `sig`, opens without a key).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "sig",
        "in": "query",
        "required": False,
        "description": "Signed link: HMAC-SHA256 of the path and `expires`, in hex.",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
]


api_key = HTTPBearer(
    scheme_name="ApiKey",
    description="One of DD_API_KEYS, as `Authorization: Bearer <key>` (when keys are set).",
    auto_error=False,
)


def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(api_key)],
) -> None:
    """With DD_API_KEYS set, every /api call needs ``Authorization: Bearer <key>`` (the key
    is kept in ``request.state.api_key``: its bound on priority applies at submit); a
    download also opens with a signed link (``?expires=&sig=``) instead."""
    keys = request.app.state.services.settings.api_keys
    if not keys:
        return
    if credentials is not None:
        sent = credentials.credentials.encode()
        # Every key compared, in constant time each, so the timing tells nothing of which.
        matches = [key for key in keys if hmac.compare_digest(sent, key.key.encode())]
        if matches:
            request.state.api_key = matches[0]
            return
    query = request.query_params
    route = request.scope.get("route")
    if getattr(route, "endpoint", None) is get_file and ("sig" in query or "expires" in query):
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        request.app.state.links.check(
            f"{FILES_PREFIX}{job_id}/{name}", query.get("expires"), query.get("sig")
        )
        return
    raise Unauthorized(
        "missing or wrong API key: send 'Authorization: Bearer <key>'", "Authorization"
    )


def domains_of(request: Request) -> dict[str, Domain]:
    """The server's domains by kind (api.domains.DOMAINS, or a test's)."""
    return request.app.state.domains


def all_models(request: Request) -> list[ModelInfo]:
    services = request.app.state.services
    return [
        model
        for domain in domains_of(request).values()
        for model in domain.describe_models(services)
    ]


class DeviceInfo(BaseModel):
    device: str = Field(examples=["cuda:0"])
    name: str = Field(examples=["NVIDIA H100 80GB HBM3"])
    memory_free_mb: int | None = None
    memory_total_mb: int | None = None
    memory_allocated_mb: int | None = None


class QueueDepth(BaseModel):
    queued: int
    running: int


class WorkerInfo(BaseModel):
    """A worker of a distributed server, as its last heartbeat described it."""

    name: str = Field(examples=["cuda:0 on gpu-box-2 (pid 4242)"])
    host: str
    pid: int
    device: str = Field(examples=["cuda:0"])
    queues: list[str] = Field(description="The queues it takes jobs from.")
    models: list[str] = Field(description="Models whose own queue it takes (--models).")
    current_job: str | None = Field(description="The id of the job it runs now.")
    warming_up: bool = Field(
        False,
        description="Getting ready for its first job (DD_PRELOAD's imports, DD_WARMUP's "
        "models): it takes jobs once this is false.",
    )
    loaded_models: list[str]
    last_heartbeat: datetime


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    devices: list[DeviceInfo] = Field(description="The devices this process runs jobs on.")
    queue: QueueDepth
    warming_up: list[str] = Field(
        description="Devices still getting ready for their first job: importing the model "
        "libraries (DD_PRELOAD), loading their DD_WARMUP models."
    )
    warning: str | None = Field(None, description="Set when tiny random weights are served.")
    broker: str | None = Field(
        None, description="Distributed (DD_BROKER_URL): the broker, its password masked."
    )
    workers: list[WorkerInfo] | None = Field(
        None, description="Distributed: the workers alive now (their heartbeats)."
    )
    queues: dict[str, QueueDepth] | None = Field(
        None, description="Distributed: queued and running jobs per queue."
    )
    data_dir: DataDirUsage | None = Field(
        None, description="What the data dir holds (walked at most every 30 s)."
    )


@health_router.get(
    "/health", operation_id="health", tags=["health"], response_model_exclude_none=True
)
def health(request: Request) -> Health:
    """Version, devices (GPU memory), queue depth, and a warning when tiny weights are served."""
    engine = request.app.state.engine
    tiny = [model.name for model in all_models(request) if model.weights.tiny]
    warning = None
    if tiny:
        warning = (
            "serving TINY RANDOM WEIGHTS for " + ", ".join(tiny) + ": outputs are noise, "
            "for tests only"
        )
    return Health(
        status="ok",
        version=__version__,
        devices=[DeviceInfo(**describe(device)) for device in engine.devices],
        queue=QueueDepth(**engine.store.queue_depth()),
        warming_up=[runner.device for runner in engine.runners if runner.warming],
        warning=warning,
        broker=engine.broker,
        workers=engine.workers(),
        queues=engine.queue_depths(),
        data_dir=request.app.state.data_dir_usage.usage(),
    )


def models_router(infos: Sequence[type[ModelInfo]]) -> APIRouter:
    """GET /models, answering the registered domains' model descriptions."""
    models = APIRouter()
    any_info: Any = infos[0]
    if len(infos) > 1:
        any_info = Annotated[Union[tuple(infos)], Field(discriminator="domain")]  # noqa: UP007

    @models.get(
        "/models", operation_id="models_list", tags=["models"], response_model=list[any_info]
    )
    def list_models(request: Request) -> list[ModelInfo]:
        """Every registered model: what it can do, where its weights come from, whether it can
        run here, where it is loaded."""
        return all_models(request)

    return models


class UploadedFile(BaseModel):
    path: str


@router.post(
    "/files",
    operation_id="files_upload",
    tags=["files"],
    status_code=201,
    response_model=UploadedFile,
    responses=error_responses(400, 403, 413, 422),
)
async def upload_file(request: Request, file: UploadFile) -> UploadedFile:
    """Upload an input image for clients without the shared mount; returns a usable path."""
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise InvalidField(f"file must be one of {', '.join(UPLOAD_SUFFIXES)}", "file")
    if file.size is not None and file.size > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", "file")
    services = request.app.state.services
    path = await run_in_threadpool(_store_upload, services, file)
    return UploadedFile(path=services.paths.to_client(path))


def _store_upload(services: Services, file: UploadFile) -> Path:
    """Copy the (already spooled) upload into the upload folder under a name of its own
    (the suffix from its real format, never the client's name), keeping it only if it is
    an image."""
    name = f"{uuid.uuid4().hex}{image_suffix(file.file, 'file')}"
    folder = WriteFolder(services.uploads_dir, [services.data_dir], "file", "the upload folder")
    with folder:
        try:  # a hidden temp file until checked
            part = folder.write_temp(name, file.file, limit=MAX_UPLOAD_BYTES)
        except OverflowError:
            raise PayloadTooLarge(
                f"file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", "file"
            ) from None
        try:
            check_image_file(folder.path / part, "file")
            folder.rename(part, name)
        except BaseException:
            folder.remove(part)
            raise
        return folder.path / name


class ServedFile(FileResponse):
    """A file served from the descriptor it was checked on (a link swapped in after the
    check is never followed); the descriptor is closed when the response is done."""

    def __init__(self, fd: int, path: Path, filename: str) -> None:
        super().__init__(
            served_path(fd, path),
            filename=filename,
            stat_result=os.fstat(fd),
            media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
        )
        self.fd = fd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)


@router.get(
    "/files/{job_id}/{name}",
    operation_id="files_get",
    tags=["files"],
    response_class=FileResponse,
    responses={
        200: {"description": "The file's bytes.", "content": {"image/*": {}}},
        **error_responses(404),
    },
    openapi_extra={"parameters": SIGNED_LINK_PARAMETERS},
)
def get_file(request: Request, job_id: str, name: str) -> FileResponse:
    """An output of a job, by the ``url`` in its result."""
    job = request.app.state.engine.store.get(job_id)
    services = request.app.state.services
    domain = domains_of(request).get(job.kind)
    wanted = f"{FILES_PREFIX}{job_id}/{name}"
    outputs = domain.output_files(job.result) if domain is not None and job.result else []
    for output in outputs:
        if output.url == wanted:
            # The take is this job's own copy; the main path may hold a later job's output.
            path = Path(services.paths.to_server(output.take_path or output.path))
            # Only a regular file (not a link) inside the data dir or the allowed roots.
            fd = open_regular_file(path, [services.data_dir, *services.paths.roots])
            if fd is not None:
                return ServedFile(fd, path, filename=Path(output.path).name)
    raise NotFound(f"job {job_id} has no output file {name!r}", "name")
