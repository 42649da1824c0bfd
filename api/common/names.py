""" "Did you mean": the known names a mistyped one most likely meant."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel


def close_names(name: str, choices: Iterable[str], limit: int = 3) -> list[str]:
    """The choices ``name`` most likely meant, best first: the same name in another case;
    else the closest spellings (``seeds`` → ``seed``); else the choices that contain it
    (``flux`` → ``flux-schnell``, ``steps`` → ``num_inference_steps``)."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    wanted = name.strip().lower()
    if wanted in by_lower:
        return [by_lower[wanted]]
    scored = sorted(
        ((difflib.SequenceMatcher(None, wanted, lower).ratio(), lower) for lower in by_lower),
        reverse=True,
    )
    best = scored[0][0] if scored else 0.0
    close = [lower for score, lower in scored if score >= max(0.6, best - 0.1)]
    if not close and len(wanted) >= 3:
        close = [lower for lower in by_lower if wanted in lower]
    return [by_lower[lower] for lower in close[:limit]]


def did_you_mean(name: str, choices: Iterable[str], quote: bool = False) -> str:
    """`` (did you mean X?)`` for the closest choices, or "" when none is close."""
    names = close_names(name, choices)
    if not names:
        return ""
    shown = [repr(n) if quote else n for n in names]
    return f" (did you mean {' or '.join(shown)}?)"


def unknown_field_hint(body: Any, location: tuple) -> str:
    """For a field a request body's model doesn't have (a pydantic error's location,
    ``("body", ..., name)``): the close valid field names at that place in the model, found
    by walking the model (nested models, lists, unions), else every valid one."""
    if location[:1] != ("body",) or len(location) < 2:
        return ""
    models = _models_in(body)
    for part in location[1:-1]:
        if isinstance(part, int):  # an item of a list
            continue
        inner = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        if inner:
            models = [model for annotation in inner for model in _models_in(annotation)]
        else:  # a union's member, named by its class or its tag (a Literal field's value)
            models = [m for m in models if m.__name__ == part or _tagged(m, part)] or models
    valid = sorted({field.alias or name for m in models for name, field in m.model_fields.items()})
    if not valid:
        return ""
    return did_you_mean(str(location[-1]), valid) or f" (valid fields: {', '.join(valid)})"


def _tagged(model: type[BaseModel], tag: str) -> bool:
    return any(
        get_origin(field.annotation) is Literal and tag in get_args(field.annotation)
        for field in model.model_fields.values()
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or those in its list/union/Optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]
