"""The agentic domain's settings (DD_AGENT_*), mixed into the server's Settings and read at
start-up with the rest. The LLM provider's key and address are the server's own
OPENAI_API_KEY and OPENAI_BASE_URL (api.common.settings), shared with gpt-image-1."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from api.common.settings import SETTINGS_CONFIG


class AgentSettings(BaseSettings):
    model_config = SETTINGS_CONFIG

    agent_model: str = Field(
        "openai:gpt-4o-mini",
        description="the agent's LLM when a request names none: openai:<model> (OpenAI, or "
        "the server OPENAI_BASE_URL names: vLLM, Ollama, a gateway) or local:<texts model> "
        "(this server's own, through its /v1)",
    )
    agent_max_tokens: int = Field(
        4096, ge=1, le=131_072, description="the longest answer the agent's LLM may give, in tokens"
    )
    agent_local_base_url: str | None = Field(
        None,
        description="where local:<model> reaches this server's /v1 (unset: "
        "http://<DD_HOST>:<DD_PORT>/v1, the loopback for 0.0.0.0)",
    )


def agent_settings(settings: object) -> AgentSettings:
    """The agentic part of the server's settings (its Settings class mixes AgentSettings in)."""
    if not isinstance(settings, AgentSettings):
        raise TypeError("the server's settings don't include the agentic domain's")
    return settings
