"""A breakdown as an LLM would answer it (the final_result tool's arguments), for the tests."""

from __future__ import annotations

from typing import Any

DIALOG = "Not tonight."  # what the keeper says from the second shot on


def shot_character(action: str, dialog: str | None = None) -> dict[str, Any]:
    return {"gender": "female", "action": action, "dialog": dialog, "frame_position": "left"}


def breakdown(shots: int = 2, keeper: str = "Mara") -> dict[str, Any]:
    """Arguments of the ``final_result`` tool: a storm, a keeper, a smuggler, ``shots`` shots."""
    return {
        "scene": {
            "name": "The storm",
            "mood": "tense",
            "location": "a lighthouse on a rocky coast",
            "time_of_day": "night",
            "weather": "storm, driving rain",
            "lighting": "the lamp's sweeping beam, lightning flashes",
            "diffusion_positive_prompt_tags": "cinematic, 35mm film, volumetric fog",
        },
        "protagonist": {
            "name": keeper,
            "role": "protagonist",
            "gender": "female",
            "age": "about 50",
            "ethnicity": "Scottish",
            "height": "tall",
            "build": "wiry",
            "eye_color": "grey",
            "hair_color": "silver",
            "profession": "lighthouse keeper",
            "attire": "oilskin coat and wool cap",
        },
        "antagonist": None,
        "shots": [
            {
                "name": f"sh{10 * (number + 1):03d}",
                "protagonist": shot_character("climbs the stairs", DIALOG if number else None),
                "antagonist": None,
                "characters": [],
                "subject": "the keeper",
                "environment": "the spiral stairwell",
                "lighting": "lamp light",
                "action": "she hurries up to the lamp room",
                "style": "handheld, anamorphic",
                "camera_angle": "low angle",
                "camera_movement": "slow push in",
                "duration_seconds": 4,
            }
            for number in range(shots)
        ],
    }
