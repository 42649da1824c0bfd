"""Re-running a job: its stored request again, with the caller's overrides, checked as a
fresh submit of its kind would be (``Domain.check_request``) and queued as a new job.

(No ``from __future__ import annotations`` here: FastAPI reads the route's annotations,
which name types made inside ``rerun_router``.)
"""

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.common.domain import Domain, Submission
from api.common.errors import ApiError, Conflict, Forbidden
from api.common.jobs.router import WaitSeconds, job_response, one_of, submit_job, submit_route
from api.common.jobs.schemas import Job
from api.common.schemas import RequestModel
from api.common.services import Services


class Overrides(RequestModel):
    """What to change from the recorded request (absent: nothing)."""

    overrides: dict[str, Any] = Field(
        {},
        description="Fields of the request to change, as in a fresh submit (e.g. "
        '{"seed": 12}; {"seed": null} draws a new seed). The result is checked exactly as a '
        "fresh submit is; an error names the field (overrides.<field> for one given here).",
    )


def _named(location: tuple, overrides: dict[str, Any]) -> tuple:
    """A field's location in the rerun body: under ``overrides`` when it came from there."""
    return ("overrides", *location) if location and location[0] in overrides else location


def check_again(
    check: Callable[[Services, dict[str, Any]], Submission],
    services: Services,
    recorded: dict[str, Any],
    overrides: dict[str, Any],
) -> Submission:
    """``recorded`` with ``overrides`` through a domain's ``check_request``; an error names
    the field where the caller sent it (``overrides.seed``)."""
    try:
        submission = check(services, recorded | overrides)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                error | {"loc": ("body", *_named(tuple(error["loc"]), overrides))}
                for error in exc.errors()
            ]
        ) from None
    except ApiError as exc:
        if exc.field is not None:
            exc.field = ".".join(_named(tuple(exc.field.split(".")), overrides))
        raise
    return submission


async def submit_again(
    request: Request, kind: str, submission: Submission, overrides: dict[str, Any]
) -> Job:
    """Queue a re-run as a job of ``kind``; a priority above the API key's is refused
    naming where the caller sent it (``overrides.priority``, or ``priority``: recorded)."""
    try:
        return await submit_job(
            request, kind, submission.model, submission.request, submission.queue
        )
    except Forbidden as exc:
        exc.field = ".".join(_named((str(exc.field),), overrides))
        raise


def rerun_router(domains: Sequence[Domain]) -> APIRouter:
    """POST /jobs/{id}/rerun, answering the registered domains' typed jobs."""
    router = APIRouter(prefix="/jobs", tags=["jobs"])
    any_job = one_of([domain.job for domain in domains])

    @router.post(
        "/{job_id}/rerun",
        **submit_route("jobs_rerun", any_job, 404, 409),
    )
    async def rerun_job(
        request: Request,
        job_id: str,
        response: Response,
        body: Overrides | None = None,
        wait: WaitSeconds = 0,
    ) -> dict[str, Any]:
        """The job's request again (as validated: its seed, sizes and inputs), with
        ``overrides``, as a new job. Same request, machine and weights → same pixels."""
        engine = request.app.state.engine
        job = await engine.get(job_id)
        domain: Domain | None = request.app.state.domains.get(job.kind)
        if domain is None or domain.check_request is None:
            raise Conflict(f"jobs of kind {job.kind} can't be re-run; submit the request again")
        overrides = body.overrides if body is not None else {}
        submission = await run_in_threadpool(
            check_again, domain.check_request, request.app.state.services, job.request, overrides
        )
        new = await submit_again(request, job.kind, submission, overrides)
        return await job_response(request, new, wait, response)

    return router
