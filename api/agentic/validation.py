"""Submit-time checks of a sequence request: a story to tell, an LLM this server can reach
(a 422 on ``model`` when its provider has no key), a texts model to describe the
references, and each reference image (inside the allowed roots, readable; a data URL saved
only once everything passed). Defaults filled: the model (DD_AGENT_MODEL)."""

from __future__ import annotations

from api.agentic.llm import parse_llm, unavailable_reason
from api.agentic.schemas import REFERENCE_FIELDS, SequenceRequest
from api.agentic.settings import agent_settings
from api.common.errors import InvalidField
from api.common.inputs import InputImages
from api.common.services import Services
from api.texts.validation import find_model as find_texts_model
from api.texts.validation import unavailable_reason as texts_unavailable_reason


def validate_request(request: SequenceRequest, services: Services) -> SequenceRequest:
    """Submit-time checks (4xx naming the field); the request with its defaults filled."""
    if not request.prompt.strip():
        raise InvalidField("prompt: tell the agent the story to break down", "prompt")
    if request.refinement_prompt is not None and not request.refinement_prompt.strip():
        raise InvalidField(
            "refinement_prompt: empty; leave it out for a single turn", "refinement_prompt"
        )
    spec = request.model or agent_settings(services.settings).agent_model
    try:
        llm = parse_llm(spec)
    except ValueError as exc:
        raise InvalidField(f"model: {exc}", "model") from None
    reason = unavailable_reason(llm, services)
    if reason is not None:
        raise InvalidField(reason, "model")
    try:
        texts_model = find_texts_model(request.texts_model)
    except InvalidField as exc:
        raise InvalidField(f"texts_model: {exc.message}", "texts_model") from None
    references = {name: getattr(request, name) for name in REFERENCE_FIELDS}
    if any(references.values()):  # the texts model will describe them: it must be here
        reason = texts_unavailable_reason(texts_model, services)
        if reason is not None:
            raise InvalidField(reason, "texts_model")
    inputs = InputImages(services)
    checked = {name: inputs.check(value, name) for name, value in references.items()}
    filled = request.model_copy(update={"model": llm.spec, **checked})
    inputs.save()
    return filled
