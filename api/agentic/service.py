"""The agentic domain's public functions: describe its LLMs and run a sequence job (the
agent on the job's LLM, each reference image described by the texts domain's
``describe_image``, a texts job of its own)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from api.agentic.llm import LLM, endpoint, parse_llm, unavailable_reason
from api.agentic.prompts import with_prompts
from api.agentic.schemas import (
    REFERENCE_FIELDS,
    AgentModelInfo,
    AgentUsage,
    SequenceRequest,
    SequenceResult,
)
from api.agentic.settings import agent_settings
from api.common.domain import OutputFile, WeightsInfo
from api.common.errors import ApiError, JobCancelled, JobFailure
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job
from api.common.services import Services
from api.texts.registry import TEXT_MODELS
from api.texts.service import describe_image


def listed_llms(services: Services) -> list[LLM]:
    """The LLMs /api/models lists: DD_AGENT_MODEL, and each local texts model."""
    listed = [parse_llm(agent_settings(services.settings).agent_model)]
    listed += [LLM("local", name) for name in TEXT_MODELS if LLM("local", name) not in listed]
    return listed


def describe_models(services: Services) -> list[AgentModelInfo]:
    """The agent's LLMs: the default one (listed first) and this server's own texts models
    (any other openai:<model> the endpoint serves may be named in a request too)."""
    max_tokens = agent_settings(services.settings).agent_max_tokens
    loaded = services.loaded_models()
    listed = listed_llms(services)
    described = []
    for llm in listed:
        reason = unavailable_reason(llm, services)
        local = llm.provider == "local"
        weights = services.find_weights(llm.name, TEXT_MODELS[llm.name].repo) if local else None
        described.append(
            AgentModelInfo(
                name=llm.spec,
                family="local-chat" if local else "openai-chat",
                modes=["sequence"],
                external=not local,
                available=reason is None,
                reason=reason,
                defaults={"default_model": llm == listed[0], "max_tokens": max_tokens},
                weights=WeightsInfo(
                    repo=TEXT_MODELS[llm.name].repo if local else llm.name,
                    source=weights.source if weights else None,
                    present=not local or bool(weights and weights.source != "download"),
                    tiny=bool(weights and weights.tiny),
                ),
                loaded_on=loaded.get(llm.name, []) if local else [],
            )
        )
    return described


def run_sequence_job(services: Services, job: Job, context: JobContext) -> SequenceResult:
    """Break the job's story down with its LLM: progress per step, cancel at once."""
    from api.agentic.agents.sequence import (
        QUESTIONS,
        Brief,
        local_model,
        openai_model,
        run_sequence_agent,
    )

    request = SequenceRequest.model_validate(job.request)
    assert request.model is not None  # filled at submit
    llm = parse_llm(request.model)
    where = endpoint(llm, services)
    build = local_model if llm.provider == "local" else openai_model
    references = {
        field.removesuffix("_reference_image"): path
        for field in REFERENCE_FIELDS
        if (path := getattr(request, field)) is not None
    }

    # Set once the job is over (or seen cancelled): a describe call still waiting for its
    # texts job in a tool thread then cancels that job. The job's own cancel flag can't
    # serve: it is forgotten as soon as the job ends, which the watcher can make happen
    # before the tool thread looks at it again.
    over = threading.Event()

    def check_cancelled() -> None:
        if over.is_set():
            raise JobCancelled(job.id)
        try:
            context.check_cancelled()
        except JobCancelled:
            over.set()
            raise

    def describe(role: str) -> str:
        try:
            return describe_image(
                services,
                references[role],
                QUESTIONS[role],
                check_cancelled,
                model=request.texts_model,
                priority=request.priority,
            )
        except ApiError as exc:  # fine at submit, not any more (the file went away?)
            field = f"{role}_reference_image"
            raise JobFailure(f"{field}: {exc.message}", type="invalid_input") from None

    def report(step: int, total: int, text: str) -> None:
        with contextlib.suppress(JobCancelled):  # the run's watcher stops it
            context.progress(step, total, status=text)

    def cancelled() -> bool:
        try:
            context.check_cancelled()
        except JobCancelled:
            return True
        return False

    brief = Brief(request.prompt, request.refinement_prompt, tuple(references))
    try:
        outcome = run_sequence_agent(
            build(llm.name, where.base_url, where.api_key),
            brief,
            describe,
            report,
            cancelled,
            tools=llm.provider != "local",
            max_tokens=agent_settings(services.settings).agent_max_tokens,
        )
    except Exception:
        context.check_cancelled()  # a cancel that surfaced as another error is a cancel
        raise
    finally:
        over.set()
    usage = AgentUsage(
        requests=outcome.requests,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        tool_calls=outcome.described,
    )
    return with_prompts(outcome.breakdown, usage)


def output_files(result: dict[str, Any]) -> list[OutputFile]:
    """A sequence job writes no files."""
    return []
