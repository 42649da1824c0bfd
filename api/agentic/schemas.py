"""Requests and results of the agentic domain (DESIGN §3.1): a story in, its breakdown into a
scene, characters and shots out, each with prompts ready for /api/images and /api/videos.

``Breakdown`` is what the LLM is asked for (its output type, validated by pydantic-ai); the
result is that breakdown with ``image_prompt`` and ``video_prompt`` built by the server
(api.agentic.prompts) and the tokens the LLM used."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.common.domain import ModelInfo
from api.common.jobs.schemas import job_model
from api.common.schemas import InputPath, JobRequest, Name, Prompt

# The reference images a request may give, by the field that names each.
REFERENCE_FIELDS = (
    "scene_reference_image",
    "protagonist_reference_image",
    "antagonist_reference_image",
)
MAX_SHOTS = 64


class SequenceRequest(JobRequest):
    """A story to break down into shots, with optional reference images of its scene and of
    its two main characters."""

    prompt: Prompt = Field(
        min_length=1,
        description="The story or sequence to break down, in the artist's words.",
        examples=["A lighthouse keeper fights off a smuggler during a storm at night."],
    )
    refinement_prompt: Prompt | None = Field(
        None,
        description="A note on the first breakdown (e.g. 'make it four shots, end on a close "
        "up'): a second turn of the same conversation returns the revised breakdown.",
    )
    scene_reference_image: InputPath | None = Field(
        None,
        description="A picture of the location or look: a path on shared storage, a path from "
        "POST /api/files, or a data: URL. The texts model describes it for the agent.",
    )
    protagonist_reference_image: InputPath | None = Field(
        None, description="A picture of the protagonist (path, upload path or data: URL)."
    )
    antagonist_reference_image: InputPath | None = Field(
        None, description="A picture of the antagonist (path, upload path or data: URL)."
    )
    model: Name | None = Field(
        None,
        description="The LLM: openai:<model> (OpenAI, or the endpoint OPENAI_BASE_URL names) "
        "or local:<texts model> (this server's own, through its /v1). DD_AGENT_MODEL when "
        "absent.",
        examples=["openai:gpt-4o-mini", "local:qwen-2.5-vl"],
    )
    texts_model: Name = Field(
        "qwen-2.5-vl", description="The texts model that describes the reference images."
    )


# What the LLM returns (pydantic-ai validates its answer against these; the descriptions
# are its instructions, field by field).


class ShotCharacter(BaseModel):
    gender: str = Field(description="The character's gender, as it reads on screen.")
    action: str = Field(description="What the character does in this shot.")
    dialog: str | None = Field(None, description="What the character says, if anything.")
    frame_position: str = Field(
        description="Where the character is in frame: left, right, centre, foreground, "
        "background..."
    )


class Shot(BaseModel):
    name: str = Field(description="A short shot name in sequence order, e.g. sh010, sh020.")
    protagonist: ShotCharacter | None = Field(
        None, description="The protagonist in this shot; null when not in it."
    )
    antagonist: ShotCharacter | None = Field(
        None, description="The antagonist in this shot; null when not in it."
    )
    characters: list[ShotCharacter] = Field(
        default_factory=list, description="Anyone else in the shot (extras, crowd)."
    )
    subject: str = Field(description="What the shot is about, in one phrase.")
    environment: str = Field(description="What surrounds the subject in this shot.")
    lighting: str = Field(description="The light in this shot: key, quality, colour.")
    action: str = Field(description="What happens during the shot.")
    style: str = Field(description="The look: film stock, lens, grade, genre references.")
    camera_angle: str = Field(description="e.g. wide establishing, low angle, close up, OTS.")
    camera_movement: str = Field(description="e.g. static, slow push in, handheld, crane up.")
    duration_seconds: float = Field(gt=0, le=600, description="The shot's length in seconds.")


class Scene(BaseModel):
    name: str = Field(description="A short name for the scene.")
    mood: str
    location: str
    time_of_day: str
    weather: str
    lighting: str = Field(description="The scene's overall light.")
    diffusion_positive_prompt_tags: str = Field(
        description="Comma-separated tags for an image model's prompt that hold the whole "
        "scene's look together (e.g. 'cinematic, 35mm film, volumetric fog, teal and orange')."
    )


class Character(BaseModel):
    name: str
    role: str = Field(description="Their part in the story, e.g. protagonist, antagonist.")
    gender: str
    age: str = Field(description="An age or age range, e.g. 'about 40'.")
    ethnicity: str
    height: str
    build: str
    eye_color: str
    hair_color: str
    profession: str
    attire: str = Field(description="What they wear, in enough detail to draw it.")


class Breakdown(BaseModel):
    """The sequence broken down for the artist: the scene, its protagonist and antagonist,
    and the shots in order."""

    scene: Scene
    protagonist: Character | None = Field(None, description="null when the story has none.")
    antagonist: Character | None = Field(None, description="null when the story has none.")
    shots: list[Shot] = Field(min_length=1, max_length=MAX_SHOTS)


# The result: the breakdown with the prompts the server builds from its fields.


class SceneResult(Scene):
    image_prompt: str = Field(description="A prompt for an establishing image of the scene.")


class CharacterResult(Character):
    image_prompt: str = Field(description="A prompt for a character sheet image.")


class ShotResult(Shot):
    image_prompt: str = Field(description="A prompt for the shot's keyframe (/api/images).")
    video_prompt: str = Field(
        description="A prompt for animating the keyframe (/api/videos, image→video)."
    )


class AgentUsage(BaseModel):
    requests: int = Field(description="Requests made to the LLM, both turns together.")
    prompt_tokens: int
    completion_tokens: int
    tool_calls: int = Field(description="Reference images described (texts jobs).")


class SequenceResult(BaseModel):
    scene: SceneResult
    protagonist: CharacterResult | None
    antagonist: CharacterResult | None
    shots: list[ShotResult]
    usage: AgentUsage


class AgentModelInfo(ModelInfo):
    """An LLM the agent can run on (GET /api/models)."""

    domain: Literal["agentic"] = "agentic"


SequenceJob = job_model("agentic", "SequenceJob", SequenceRequest, SequenceResult)
