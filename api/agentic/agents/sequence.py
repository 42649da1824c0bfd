"""The sequence agent: a storyboard artist and script supervisor on an LLM (pydantic-ai),
which breaks a story into a scene, its characters and its shots. Each reference image the
request gives is a tool the LLM calls (``describe_<role>_reference``), answered by the
caller's ``describe`` (the texts domain's model); a refinement is a second turn on the first
turn's messages. The caller gets a progress note per step (an LLM request, a tool call) and
cancels through ``cancelled``, which stops the run at once, between steps or mid-request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic_ai import Agent, CancellationToken, Tool
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelHTTPError,
    RunCancelled,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
)
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models import Model
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.output import PromptedOutput
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider
from pydantic_ai.settings import ModelSettings

from api.agentic.schemas import Breakdown
from api.common.errors import JobCancelled, JobFailure

INSTRUCTIONS = """\
You are a storyboard artist and script supervisor on a film's visual effects team. From the
director's brief you plan one scene as a sequence of shots that a VFX artist will generate
image by image and animate shot by shot.

- Describe the scene once: where and when it happens, its weather, light and mood, and a
  short list of comma-separated image-model tags that hold its look together.
- Describe the protagonist and the antagonist precisely enough that every shot draws the
  same person (age, build, hair, eyes, attire...). Leave one out (null) only when the story
  has no such character.
- Break the story into shots in order, named sh010, sh020, ... Each shot says its subject,
  who is in it and where in frame, what they do and say, its environment and light, its
  style, the camera angle and movement, and its length in seconds (a few seconds each).
- Keep continuity: the same names, looks, places and light from shot to shot.
- When reference images are given, call their describe tools first and build on what they
  show: the scene's look from the scene reference, each character's look from theirs.
- When asked to revise, return the whole revised breakdown, not only the changes.
"""

PERSON = (
    "Describe the person in this picture for a film's casting and costume departments: "
    "apparent age, gender, build, height, hair, eyes, skin, clothing and expression."
)
# What the texts model is asked of each reference image.
QUESTIONS = {
    "scene": "Describe this picture for a film's storyboard: the place, the time of day, the "
    "weather, the light and its colours, the mood and the visual style.",
    "protagonist": PERSON,
    "antagonist": PERSON,
}
# How often a run looks whether its job was cancelled (the run then stops at once).
CANCEL_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Brief:
    """What the agent is asked: the story, an optional revision note, and the roles
    (scene, protagonist, antagonist) that have a reference image."""

    prompt: str
    refinement_prompt: str | None = None
    references: tuple[str, ...] = ()


@dataclass
class Outcome:
    breakdown: Breakdown
    requests: int
    prompt_tokens: int
    completion_tokens: int
    messages: list[ModelMessage] = field(default_factory=list)  # both turns, for the record
    described: int = 0  # reference images described (one texts job each)


def openai_model(name: str, base_url: str, api_key: str | None) -> OpenAIChatModel:
    """An OpenAI chat-completions model: OpenAI's own, or the OpenAI-compatible server at
    ``base_url`` (vLLM, Ollama and gateways take any key when they want none)."""
    provider = OpenAIProvider(base_url=base_url, api_key=api_key or "no-key")
    return OpenAIChatModel(name, provider=provider)


def local_model(name: str, base_url: str, api_key: str | None) -> OpenAIChatModel:
    """This server's own texts model through its OpenAI-compatible /v1."""
    provider = OpenAICompatibleProvider("deferred-diffusion", base_url=base_url, api_key=api_key)
    return OpenAIChatModel(name, provider=provider)


class Steps:
    """Numbered progress notes, from the run's loop and from tool threads alike."""

    def __init__(self, report: Callable[[int, int, str], None], expected: int) -> None:
        self._report = report
        self._lock = threading.Lock()
        self.done = 0
        self.expected = expected

    def note(self, text: str) -> None:
        with self._lock:
            self.done += 1
            self.expected = max(self.expected, self.done + 1)
            step, total = self.done, self.expected
        self._report(step, total, text)

    def finish(self, text: str) -> None:
        """The last step: the run's end (step = total)."""
        with self._lock:
            self.done += 1
            self.expected = step = self.done
        self._report(step, step, text)


def expected_steps(brief: Brief, tools: bool) -> int:
    """Steps a run takes when all goes well: per turn an LLM request, and with references
    one more request after their tool calls (or, without tools, their descriptions first);
    then its end."""
    turns = 2 if brief.refinement_prompt else 1
    return turns + len(brief.references) + (1 if brief.references and tools else 0) + 1


def run_sequence_agent(
    model: Model,
    brief: Brief,
    describe: Callable[[str], str],
    report: Callable[[int, int, str], None],
    cancelled: Callable[[], bool],
    *,
    tools: bool = True,
    max_tokens: int | None = None,
) -> Outcome:
    """The breakdown of ``brief`` by ``model``. ``describe(role)`` answers a reference's
    tool call; ``report(step, total, text)`` hears each step; ``cancelled()`` true stops
    the run (JobCancelled). With ``tools`` false (an endpoint that can't call tools) the
    references are described before the first request and given in it, and the breakdown
    is asked for as JSON in the prompt. A provider's failure (HTTP error, no connection,
    an answer that never fits the breakdown) raises JobFailure ``provider_error``."""
    steps = Steps(report, expected_steps(brief, tools))
    try:
        outcome = asyncio.run(_run(model, brief, describe, steps, cancelled, tools, max_tokens))
    except RunCancelled as exc:
        raise JobCancelled(str(exc)) from None
    except ModelAPIError as exc:
        raise JobFailure(provider_message(exc, model.base_url), type="provider_error") from exc
    except (UnexpectedModelBehavior, UsageLimitExceeded) as exc:
        raise JobFailure(
            f"the LLM's answers did not make a breakdown: {exc}", type="provider_error"
        ) from exc
    steps.finish(f"the breakdown is ready: {len(outcome.breakdown.shots)} shots")
    return outcome


def provider_message(error: ModelAPIError, base_url: str | None) -> str:
    """The LLM provider's failure in a line: who, where, its status, and its own words."""
    where = f" at {base_url}" if base_url else ""
    if not isinstance(error, ModelHTTPError):
        return f"could not reach the LLM {error.model_name}{where}: {error.message}"
    body = error.body
    said = body.get("message") if isinstance(body, dict) else None
    code = body.get("code") if isinstance(body, dict) else None
    return (
        f"the LLM {error.model_name}{where} answered HTTP {error.status_code}: "
        f"{said or body or error.message}{f' ({code})' if code else ''}"
    )


async def _run(
    model: Model,
    brief: Brief,
    describe: Callable[[str], str],
    steps: Steps,
    cancelled: Callable[[], bool],
    tools: bool,
    max_tokens: int | None,
) -> Outcome:
    token = CancellationToken()
    watcher = asyncio.create_task(_watch(cancelled, token))
    descriptions: dict[str, str] = {}
    locks = {role: threading.Lock() for role in brief.references}

    def described(role: str) -> str:
        """A reference's description: asked of the texts model once per job (the roles'
        descriptions may be asked for at once, each a texts job of its own)."""
        with locks[role]:
            if role not in descriptions:
                steps.note(f"describing the {role} reference image")
                descriptions[role] = describe(role)
            return descriptions[role]

    prompt = brief.prompt
    if tools:
        agent_tools = [_describe_tool(role, described) for role in brief.references]
        output_type: type[Breakdown] | PromptedOutput[Breakdown] = Breakdown
        if brief.references:
            prompt += "\n\nReference images: " + ", ".join(
                f"{role} (describe_{role}_reference)" for role in brief.references
            )
    else:
        agent_tools = []
        output_type = PromptedOutput(Breakdown)
        for role in brief.references:
            text = await asyncio.to_thread(described, role)
            prompt += f"\n\nThe {role} reference image shows: {text}"
    agent = Agent(
        model,
        output_type=output_type,
        instructions=INSTRUCTIONS,
        tools=agent_tools,
        model_settings=ModelSettings(max_tokens=max_tokens) if max_tokens else None,
        name="sequence_agent",
    )
    try:
        async with agent:
            first = await _turn(agent, prompt, None, steps, cancelled, token, "first turn")
            final = first
            if brief.refinement_prompt:
                final = await _turn(
                    agent,
                    brief.refinement_prompt,
                    first.messages,
                    steps,
                    cancelled,
                    token,
                    "refinement",
                )
    finally:
        watcher.cancel()
    return Outcome(
        breakdown=final.breakdown,
        requests=first.requests + (final.requests if final is not first else 0),
        prompt_tokens=first.prompt_tokens + (final.prompt_tokens if final is not first else 0),
        completion_tokens=first.completion_tokens
        + (final.completion_tokens if final is not first else 0),
        messages=final.messages,
        described=len(descriptions),
    )


def _describe_tool(role: str, described: Callable[[str], str]) -> Tool[None]:
    def describe_reference() -> str:
        return described(role)

    return Tool(
        describe_reference,
        takes_ctx=False,
        name=f"describe_{role}_reference",
        description=f"Describe the {role} reference image the artist gave (what it shows, "
        "as a vision model sees it).",
    )


async def _turn(
    agent: Agent[None, Breakdown],
    prompt: str,
    history: Sequence[ModelMessage] | None,
    steps: Steps,
    cancelled: Callable[[], bool],
    token: CancellationToken,
    label: str,
) -> Outcome:
    requests = 0
    async with agent.iter(prompt, message_history=history, cancellation_token=token) as run:
        async for node in run:
            if cancelled():  # before the next step (the watcher stops one under way)
                raise JobCancelled("cancelled between the agent's steps")
            if Agent.is_model_request_node(node):
                requests += 1
                steps.note(f"asking the LLM ({label}, request {requests})")
        result = run.result
        assert result is not None  # the loop ran to its end
        usage = result.usage
        return Outcome(
            breakdown=result.output,
            requests=usage.requests,
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            messages=result.all_messages(),
        )


async def _watch(cancelled: Callable[[], bool], token: CancellationToken) -> None:
    while not cancelled():
        await asyncio.sleep(CANCEL_POLL_SECONDS)
    token.cancel()
