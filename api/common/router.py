"""HTTP shared by every domain: health, the model list, file upload and download."""

from __future__ import annotations

import hmac
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api import __version__
from api.common.devices import describe
from api.common.errors import (
    InvalidField,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    error_responses,
)
from api.common.media import check_image_file
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
    """With DD_API_KEYS set, every /api call needs ``Authorization: Bearer <key>``; a
    download also opens with a signed link (``?expires=&sig=``) instead."""
    keys = request.app.state.services.settings.api_keys
    if not keys:
        return
    if credentials is not None and any(
        hmac.compare_digest(credentials.credentials.encode(), key.encode()) for key in keys
    ):
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


def all_models(request: Request) -> list[dict[str, Any]]:
    services = request.app.state.services
    return [
        model
        for describe_models in request.app.state.catalogs
        for model in describe_models(services)
    ]


@health_router.get("/health", operation_id="health", tags=["health"])
def health(request: Request) -> dict[str, Any]:
    """Version, devices (GPU memory), queue depth, and a warning when tiny weights are served."""
    engine = request.app.state.engine
    tiny = [m["name"] for m in all_models(request) if m["weights"]["tiny"]]
    body: dict[str, Any] = {
        "status": "ok",
        "version": __version__,
        "devices": [describe(device) for device in engine.devices],
        "queue": engine.store.queue_depth(),
        "warming_up": [runner.device for runner in engine.runners if runner.warming],
    }
    if tiny:
        body["warning"] = (
            "serving TINY RANDOM WEIGHTS for " + ", ".join(tiny) + ": outputs are noise, "
            "for tests only"
        )
    return body


@router.get("/models", operation_id="models_list", tags=["models"])
def list_models(request: Request) -> list[dict[str, Any]]:
    """Every registered model: what it can do, where its weights come from, whether loaded."""
    return all_models(request)


class UploadedFile(BaseModel):
    path: str


@router.post(
    "/files",
    operation_id="files_upload",
    tags=["files"],
    status_code=201,
    response_model=UploadedFile,
    responses=error_responses(400, 413, 422),
)
async def upload_file(request: Request, file: UploadFile) -> UploadedFile:
    """Upload an input image for clients without the shared mount; returns a usable path."""
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise InvalidField(f"file must be one of {', '.join(UPLOAD_SUFFIXES)}", "file")
    if file.size is not None and file.size > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", "file")
    services = request.app.state.services
    path = services.data_dir / "uploads" / f"{uuid.uuid4().hex}{suffix}"
    await run_in_threadpool(_store_upload, file, path)
    return UploadedFile(path=services.paths.to_client(path))


def _store_upload(file: UploadFile, path: Path) -> None:
    """Copy the (already spooled) upload into place, then keep it only if it is an image."""
    part = path.with_name(f".{path.stem}.part{path.suffix}")  # hidden until checked
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        with part.open("wb") as out:
            shutil.copyfileobj(file.file, out, 2**20)
        if part.stat().st_size > MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(f"file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", "file")
        check_image_file(part, "file")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


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
    paths = request.app.state.services.paths
    wanted = f"/api/files/{job_id}/{name}"
    for output in (job.result or {}).get("images", []):
        if output["url"] == wanted:
            # The take is this job's own copy; the main path may hold a later job's output.
            path = Path(paths.to_server(output.get("take_path") or output["path"]))
            if path.is_file():
                return FileResponse(path, filename=Path(output["path"]).name)
    raise NotFound(f"job {job_id} has no output file {name!r}", "name")
