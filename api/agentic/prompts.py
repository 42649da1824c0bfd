"""The prompts of a breakdown, built by the server from its fields (not written by the LLM,
so they always say what the fields say): an establishing image of the scene, a character
sheet per character, and per shot a keyframe prompt (/api/images) and a motion prompt
(/api/videos, image→video). Pure functions: the same breakdown, the same prompts."""

from __future__ import annotations

from api.agentic.schemas import (
    AgentUsage,
    Breakdown,
    Character,
    CharacterResult,
    Scene,
    SceneResult,
    SequenceResult,
    Shot,
    ShotCharacter,
    ShotResult,
)

ENDINGS = ("!", "?", '"')  # a sentence that ends so needs no full stop


def _clean(text: str | None) -> str:
    return " ".join((text or "").split()).strip(" ,.;")


def _spoken(text: str | None) -> str:
    """Dialog as written (its own punctuation), on one line."""
    return " ".join((text or "").split())


def _sentences(*parts: str | None) -> str:
    """The non-empty parts as sentences: 'A. B. C.'"""
    kept = [_clean(part) for part in parts]
    return " ".join(
        part[0].upper() + part[1:] + ("" if part.endswith(ENDINGS) else ".")
        for part in kept
        if part
    )


def _listed(*parts: str | None) -> str:
    """The non-empty parts, comma separated."""
    return ", ".join(part for part in map(_clean, parts) if part)


def scene_image_prompt(scene: Scene) -> str:
    return _sentences(
        f"establishing shot of {_clean(scene.location)}" if _clean(scene.location) else "",
        _listed(scene.time_of_day, scene.weather),
        scene.lighting,
        f"{_clean(scene.mood)} mood" if _clean(scene.mood) else "",
        scene.diffusion_positive_prompt_tags,
    )


def character_look(character: Character) -> str:
    """Who a character is and how they look, in one phrase (the same in every prompt, so the
    character stays the same from shot to shot)."""
    who = " ".join(
        _clean(part) for part in (character.age, character.ethnicity, character.gender) if part
    )
    return _listed(
        _clean(character.name),
        f"{who} {_clean(character.profession)}".strip(),
        character.height,
        f"{_clean(character.build)} build" if _clean(character.build) else "",
        f"{_clean(character.eye_color)} eyes" if _clean(character.eye_color) else "",
        f"{_clean(character.hair_color)} hair" if _clean(character.hair_color) else "",
        f"wearing {_clean(character.attire)}" if _clean(character.attire) else "",
    )


def character_image_prompt(character: Character, scene: Scene) -> str:
    return _sentences(
        f"full-body character sheet of {character_look(character)}",
        "neutral pose, plain backdrop, even studio light",
        scene.diffusion_positive_prompt_tags,
    )


def _in_shot(who: ShotCharacter, character: Character | None, fallback: str) -> str:
    """A character as a shot shows them: who (their look), where in frame, doing what."""
    name = character_look(character) if character else _listed(fallback, who.gender)
    where = f"on the {_clean(who.frame_position)} of frame" if _clean(who.frame_position) else ""
    return _listed(name, where, who.action)


def _people(shot: Shot, breakdown: Breakdown) -> list[str]:
    people = []
    if shot.protagonist is not None:
        people.append(_in_shot(shot.protagonist, breakdown.protagonist, "the protagonist"))
    if shot.antagonist is not None:
        people.append(_in_shot(shot.antagonist, breakdown.antagonist, "the antagonist"))
    people += [_in_shot(extra, None, "a figure") for extra in shot.characters]
    return people


def shot_image_prompt(shot: Shot, breakdown: Breakdown) -> str:
    """The shot's keyframe: framing and subject, who is where, the place, light and look."""
    return _sentences(
        _listed(shot.camera_angle, shot.subject),
        *_people(shot, breakdown),
        shot.environment,
        _listed(breakdown.scene.location, breakdown.scene.time_of_day, breakdown.scene.weather),
        shot.lighting,
        shot.style,
        breakdown.scene.diffusion_positive_prompt_tags,
    )


def shot_video_prompt(shot: Shot, breakdown: Breakdown) -> str:
    """The keyframe set in motion: the camera's move, what happens and who does what, and
    what is said."""
    leads = [
        ((_clean(character.name) if character else "") or fallback, who)
        for character, who, fallback in (
            (breakdown.protagonist, shot.protagonist, "the protagonist"),
            (breakdown.antagonist, shot.antagonist, "the antagonist"),
        )
        if who is not None
    ]
    actions = [f"{name} {_clean(who.action)}" for name, who in leads if _clean(who.action)]
    said = [f'{name} says: "{_spoken(who.dialog)}"' for name, who in leads if _clean(who.dialog)]
    return _sentences(
        _listed(shot.camera_movement, shot.camera_angle),
        shot.action,
        *actions,
        *said,
        shot.style,
        f"{shot.duration_seconds:g} seconds",
    )


def with_prompts(breakdown: Breakdown, usage: AgentUsage) -> SequenceResult:
    """The job's result: the breakdown with every prompt built from its fields."""
    scene = breakdown.scene

    def character(found: Character | None) -> CharacterResult | None:
        if found is None:
            return None
        return CharacterResult(
            **found.model_dump(), image_prompt=character_image_prompt(found, scene)
        )

    return SequenceResult(
        scene=SceneResult(**scene.model_dump(), image_prompt=scene_image_prompt(scene)),
        protagonist=character(breakdown.protagonist),
        antagonist=character(breakdown.antagonist),
        shots=[
            ShotResult(
                **shot.model_dump(),
                image_prompt=shot_image_prompt(shot, breakdown),
                video_prompt=shot_video_prompt(shot, breakdown),
            )
            for shot in breakdown.shots
        ],
        usage=usage,
    )
