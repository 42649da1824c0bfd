"""Submit-time checks of a text request: the model, every image and video part (inside
the allowed roots, readable; an inline image saved only once everything passed), defaults."""

from __future__ import annotations

import random

from api.common.errors import InvalidField
from api.common.inputs import InputImages
from api.common.names import did_you_mean
from api.common.services import Services
from api.common.video import check_video_file
from api.texts.registry import TEXT_MODELS, Part, TextModel
from api.texts.schemas import ImagePart, Message, TextRequest, VideoPart


def find_model(name: str) -> TextModel:
    model = TEXT_MODELS.get(name)
    if model is None:
        raise InvalidField(
            f"unknown text model {name!r}{did_you_mean(name, TEXT_MODELS, quote=True)}; "
            f"choose one of {', '.join(TEXT_MODELS)}",
            "model",
        )
    return model


def unavailable_reason(model: TextModel, services: Services) -> str | None:
    """Why this server can't run ``model`` now (weights absent, downloads off), or None."""
    if services.find_weights(model.name, model.repo) is None:
        return services.missing_weights(model.name, model.repo)
    return None


def validate_request(request: TextRequest, services: Services) -> TextRequest:
    """Submit-time checks (4xx naming the field); returns the request with defaults filled
    (inline images replaced by the paths they are saved at)."""
    model = find_model(request.model)
    reason = unavailable_reason(model, services)
    if reason is not None:
        raise InvalidField(reason, "model")
    inputs = InputImages(services)
    messages = []
    for index, message in enumerate(request.messages):
        if isinstance(message.content, str):
            messages.append(message)
            continue
        parts = []
        for number, part in enumerate(message.content):
            field = f"messages.{index}.content.{number}"
            if isinstance(part, ImagePart | VideoPart) and Part(part.type) not in model.parts:
                raise InvalidField(f"{field}: {model.name} reads no {part.type}", field)
            if isinstance(part, ImagePart):
                checked = inputs.check(part.image, f"{field}.image")
                part = part.model_copy(update={"image": checked})
            elif isinstance(part, VideoPart):
                path = services.paths.resolve_input_path(part.video, f"{field}.video")
                check_video_file(path, f"{field}.video")
            parts.append(part)
        messages.append(Message(role=message.role, content=parts))
    filled = request.model_copy(
        update={
            "messages": messages,
            "temperature": (
                request.temperature if request.temperature is not None else model.temperature
            ),
            "seed": request.seed if request.seed is not None else random.randrange(2**31),
            "max_tokens": request.max_tokens or model.max_tokens,
        }
    )
    inputs.save()
    return filled
