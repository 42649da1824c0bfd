"""The LLMs the agent runs on, by name: ``openai:<model>`` (OpenAI's chat completions API,
at OpenAI or wherever OPENAI_BASE_URL points: vLLM, Ollama, a gateway) and
``local:<texts model>`` (this server's own texts model, through its OpenAI-compatible /v1).
Naming and checking them needs no model library; api.agentic.agents builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from api.agentic.settings import agent_settings
from api.common.names import did_you_mean
from api.common.services import Services
from api.texts.registry import TEXT_MODELS
from api.texts.validation import unavailable_reason as texts_unavailable_reason

PROVIDERS = ("openai", "local")
OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class LLM:
    provider: Literal["openai", "local"]
    name: str  # the model's name at the provider (for local: the texts model's)

    @property
    def spec(self) -> str:
        return f"{self.provider}:{self.name}"


def parse_llm(spec: str) -> LLM:
    """``openai:<model>`` or ``local:<texts model>``; ValueError saying what is wrong."""
    provider, colon, name = spec.strip().partition(":")
    if not colon or not name.strip():
        raise ValueError(
            f"{spec!r} names no provider: write openai:<model> (e.g. openai:gpt-4o-mini) or "
            f"local:<texts model> (e.g. local:{next(iter(TEXT_MODELS))})"
        )
    if provider == "openai":
        return LLM("openai", name.strip())
    if provider == "local":
        if name not in TEXT_MODELS:
            raise ValueError(
                f"{spec!r}: this server has no texts model {name!r}"
                f"{did_you_mean(name, TEXT_MODELS, quote=True)}; local models: "
                + ", ".join(f"local:{model}" for model in TEXT_MODELS)
            )
        return LLM("local", name)
    raise ValueError(
        f"{spec!r}: unknown provider {provider!r}{did_you_mean(provider, PROVIDERS, quote=True)}; "
        "the agent runs on openai:<model> (OpenAI or any OpenAI-compatible server through "
        "OPENAI_BASE_URL) or local:<texts model>"
    )


def unavailable_reason(llm: LLM, services: Services) -> str | None:
    """Why the agent can't run on ``llm`` here now (no key for the provider, the local
    model's weights absent), or None when it can."""
    settings = services.settings
    if llm.provider == "openai":
        if settings.openai_api_key is None and settings.openai_base_url is None:
            return (
                f"model {llm.spec} runs at OpenAI and this server has no OPENAI_API_KEY; set it "
                "in the server's environment and restart the server (or point OPENAI_BASE_URL "
                "at an OpenAI-compatible server such as vLLM or Ollama, or use local:"
                f"{next(iter(TEXT_MODELS))})"
            )
        return None
    return texts_unavailable_reason(TEXT_MODELS[llm.name], services)


@dataclass(frozen=True)
class Endpoint:
    """Where an LLM's chat completions are asked for, with which key."""

    base_url: str
    api_key: str | None


def endpoint(llm: LLM, services: Services) -> Endpoint:
    settings = services.settings
    if llm.provider == "openai":
        key = settings.openai_api_key
        return Endpoint(
            settings.openai_base_url or OPENAI_URL, key.get_secret_value() if key else None
        )
    own = agent_settings(settings).agent_local_base_url or own_v1(settings.host, settings.port)
    return Endpoint(own, settings.api_keys[0].key if settings.api_keys else None)


def own_v1(host: str, port: int) -> str:
    """This server's /v1 as a client on this machine reaches it (a wildcard address, every
    interface, through the loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
