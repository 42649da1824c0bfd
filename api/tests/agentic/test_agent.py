"""The agent's logic on pydantic-ai's own test models (FunctionModel, TestModel): the
describe tools called once per reference and their answers fed back, the breakdown
validated and its prompts built, the refinement turn on the first turn's messages, bad
answers failing as provider_error, and cancel stopping the run."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from api.agentic.agents.sequence import Brief, Outcome, run_sequence_agent
from api.agentic.prompts import with_prompts
from api.agentic.schemas import AgentUsage, Breakdown
from api.common.errors import JobCancelled, JobFailure
from api.tests.agentic.breakdowns import breakdown


class Recorder:
    """What a run told its caller: the descriptions asked for and the progress notes."""

    def __init__(self) -> None:
        self.described: list[str] = []
        self.steps: list[tuple[int, int, str]] = []

    def describe(self, role: str) -> str:
        self.described.append(role)
        return f"a picture of the {role}, in blue light"

    def report(self, step: int, total: int, text: str) -> None:
        self.steps.append((step, total, text))


def run(model: Any, brief: Brief, recorder: Recorder, **kwargs: Any) -> Outcome:
    return run_sequence_agent(
        model, brief, recorder.describe, recorder.report, lambda: False, **kwargs
    )


def tool_returns(messages: list[ModelMessage]) -> dict[str, Any]:
    return {
        part.tool_name: part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart) and part.tool_name != "final_result"
    }


def user_prompts(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart)
    ]


def storyboarder(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """An LLM that first calls every describe tool it is given, then answers the breakdown
    (with as many shots as there are user prompts so far: a revision adds one)."""
    described = tool_returns(messages)
    wanted = [tool.name for tool in info.function_tools if tool.name not in described]
    if wanted:
        return ModelResponse(parts=[ToolCallPart(name, {}) for name in wanted])
    [output] = info.output_tools
    shots = len(user_prompts(messages)) + 1
    return ModelResponse(parts=[ToolCallPart(output.name, breakdown(shots=shots))])


def test_each_reference_is_described_once_and_fed_back():
    recorder = Recorder()
    brief = Brief("A keeper fights a storm.", references=("scene", "protagonist"))
    outcome = run(FunctionModel(storyboarder), brief, recorder)
    assert sorted(recorder.described) == ["protagonist", "scene"]
    returns = tool_returns(outcome.messages)
    assert returns == {
        "describe_scene_reference": "a picture of the scene, in blue light",
        "describe_protagonist_reference": "a picture of the protagonist, in blue light",
    }
    assert outcome.breakdown == Breakdown.model_validate(breakdown(shots=2))
    assert outcome.requests == 2 and outcome.described == 2
    assert outcome.prompt_tokens > 0 and outcome.completion_tokens > 0
    texts = [text for _, _, text in recorder.steps]
    assert texts[0] == "asking the LLM (first turn, request 1)"
    assert "describing the scene reference image" in texts
    assert "describing the protagonist reference image" in texts
    assert texts[-2:] == [
        "asking the LLM (first turn, request 2)",
        "the breakdown is ready: 2 shots",
    ]
    assert [step for step, _, _ in recorder.steps] == [1, 2, 3, 4, 5]
    assert all(total == 5 for _, total, _ in recorder.steps)  # as expected from the start


def test_no_reference_no_tool():
    recorder = Recorder()
    outcome = run(FunctionModel(storyboarder), Brief("A keeper fights a storm."), recorder)
    assert recorder.described == [] and outcome.requests == 1 and outcome.described == 0
    assert recorder.steps == [
        (1, 2, "asking the LLM (first turn, request 1)"),
        (2, 2, "the breakdown is ready: 2 shots"),
    ]


def test_the_refinement_turn_carries_the_first_turns_messages():
    seen: list[list[str]] = []

    def llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(user_prompts(messages))
        return storyboarder(messages, info)

    recorder = Recorder()
    brief = Brief("A keeper fights a storm.", "Add a shot.", ("scene",))
    outcome = run(FunctionModel(llm), brief, recorder)
    assert recorder.described == ["scene"]  # the second turn reuses the description
    first, *_, last = seen
    assert first[0].startswith("A keeper fights a storm.")
    assert last == [first[0], "Add a shot."]  # the whole first turn, then the note
    assert len(outcome.breakdown.shots) == 3  # revised: the LLM saw two user prompts
    assert outcome.requests == 3
    assert recorder.steps[-2][2] == "asking the LLM (refinement, request 1)"


def test_test_model_calls_every_tool_and_fills_the_schema():
    recorder = Recorder()
    brief = Brief("A chase.", references=("scene", "protagonist", "antagonist"))
    outcome = run(TestModel(), brief, recorder)
    assert sorted(recorder.described) == ["antagonist", "protagonist", "scene"]
    assert isinstance(outcome.breakdown, Breakdown) and outcome.breakdown.shots


def test_an_answer_that_never_fits_fails_as_provider_error():
    def llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        [output] = info.output_tools
        return ModelResponse(parts=[ToolCallPart(output.name, {"scene": "a storm"})])

    with pytest.raises(JobFailure) as failure:
        run(FunctionModel(llm), Brief("A storm."), Recorder())
    assert failure.value.type == "provider_error"
    assert "did not make a breakdown" in str(failure.value)


def test_plain_text_endpoints_get_the_schema_in_the_prompt():
    """Without tools (this server's /v1): references described first and given in the
    prompt, the breakdown asked for as JSON text."""
    prompts: list[str] = []

    def llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        assert info.function_tools == [] and info.output_tools == []
        prompts.extend(user_prompts(messages))
        assert "Breakdown" in (info.instructions or "") or "scene" in (info.instructions or "")
        return ModelResponse(parts=[TextPart(json.dumps(breakdown()))])

    recorder = Recorder()
    brief = Brief("A storm.", references=("scene",))
    outcome = run(FunctionModel(llm), brief, recorder, tools=False)
    assert recorder.described == ["scene"]
    assert "The scene reference image shows: a picture of the scene" in prompts[0]
    assert outcome.breakdown == Breakdown.model_validate(breakdown())


def test_cancel_stops_the_run_between_steps():
    stop = threading.Event()
    calls: list[int] = []

    def llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(1)
        stop.set()  # the job is cancelled while the LLM answers
        return storyboarder(messages, info)

    recorder = Recorder()
    with pytest.raises(JobCancelled):
        run_sequence_agent(
            FunctionModel(llm),
            Brief("A storm.", references=("scene",)),
            recorder.describe,
            recorder.report,
            stop.is_set,
        )
    assert len(calls) == 1 and recorder.described == []


def test_prompts_are_built_from_the_fields():
    result = with_prompts(
        Breakdown.model_validate(breakdown(shots=2)),
        AgentUsage(requests=1, prompt_tokens=1, completion_tokens=1, tool_calls=0),
    )
    assert result.scene.image_prompt == (
        "Establishing shot of a lighthouse on a rocky coast. Night, storm, driving rain. "
        "The lamp's sweeping beam, lightning flashes. Tense mood. "
        "Cinematic, 35mm film, volumetric fog."
    )
    assert result.protagonist is not None and result.antagonist is None
    assert result.protagonist.image_prompt.startswith(
        "Full-body character sheet of Mara, about 50 Scottish female lighthouse keeper, tall, "
        "wiry build, grey eyes, silver hair, wearing oilskin coat and wool cap."
    )
    first, second = result.shots
    assert first.image_prompt == (
        "Low angle, the keeper. Mara, about 50 Scottish female lighthouse keeper, tall, wiry "
        "build, grey eyes, silver hair, wearing oilskin coat and wool cap, on the left of "
        "frame, climbs the stairs. The spiral stairwell. A lighthouse on a rocky coast, "
        "night, storm, driving rain. Lamp light. Handheld, anamorphic. "
        "Cinematic, 35mm film, volumetric fog."
    )
    assert first.video_prompt == (
        "Slow push in, low angle. She hurries up to the lamp room. Mara climbs the stairs. "
        "Handheld, anamorphic. 4 seconds."
    )
    assert second.video_prompt == (
        "Slow push in, low angle. She hurries up to the lamp room. Mara climbs the stairs. "
        'Mara says: "Not tonight." Handheld, anamorphic. 4 seconds.'
    )
    again = with_prompts(Breakdown.model_validate(breakdown(shots=2)), result.usage)
    assert again == result  # the same fields, the same prompts
