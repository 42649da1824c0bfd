"""The agentic domain, as the server registers it (api.domains): /api/agentic/sequences."""

from __future__ import annotations

from typing import Any

from api.agentic import service
from api.agentic.llm import parse_llm
from api.agentic.router import router
from api.agentic.schemas import AgentModelInfo, SequenceJob
from api.agentic.settings import AgentSettings, agent_settings
from api.common.domain import Domain


def check_settings(settings: Any) -> None:
    """DD_AGENT_MODEL names an LLM the agent knows how to reach (its key is checked per
    request: a server may serve local models only)."""
    try:
        parse_llm(agent_settings(settings).agent_model)
    except ValueError as exc:
        from api.common.settings import SettingsError

        raise SettingsError(f"invalid settings:\n  DD_AGENT_MODEL: {exc}") from None


AGENTIC = Domain(
    kind="agentic",
    router=router,
    job=SequenceJob,
    model_info=AgentModelInfo,
    describe_models=service.describe_models,
    run_job=service.run_sequence_job,
    output_files=service.output_files,
    settings=AgentSettings,
    check_settings=check_settings,
)
