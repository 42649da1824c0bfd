"""Submit-time checks of a video request: every field and input checked (a 4xx naming the
field), defaults filled (the frame count rounded to one the model makes), and nothing
written until every check has passed (an inline data URL is saved last)."""

from __future__ import annotations

import random
from pathlib import Path

from api.common.errors import InvalidField
from api.common.inputs import InputImages
from api.common.models import Weights
from api.common.schemas import JobRequest
from api.common.services import Services
from api.videos.context import FRAME_NUMBER, find_model, frame_path, mode_of
from api.videos.registry import VIDEO_MODELS, VideoModel, valid_frames
from api.videos.schemas import VideoRequest
from api.videos.settings import video_settings

# Tiny random weights (tests) make noise at any size: a small default size, frame count and
# step count keep a laptop's job to seconds.
TINY_SIZE = 64
TINY_STEPS = 4

# What a provider's model takes of a request (the provider picks the size, rate and steps).
PROVIDER_FIELDS = frozenset(
    {"model", "prompt", "input_image_path", "seed", "num_frames"}
    | {"output_video_path", "output_frames_path", "start_frame"}
    | set(JobRequest.model_fields)  # any job's: priority, callback_url
)


def unavailable_reason(model: VideoModel, services: Services) -> str | None:
    """Why this server can't run ``model`` now (a provider's retired model or no key;
    weights absent while downloads are off), or None when it can."""
    if model.retired:
        return (
            f"{model.name}: the provider retired {model.repo} on {model.retired} and refuses "
            "it; use runway-gen4-turbo"
        )
    if model.api_key_env:
        if getattr(video_settings(services.settings), model.api_key_env.lower()) is None:
            return (
                f"model {model.name} runs at its provider and this server has no "
                f"{model.api_key_env}; set it in the server's environment and restart the server"
            )
        return None
    if services.find_weights(model.name, model.repo) is None:
        return services.missing_weights(model.name, model.repo)
    return None


def default_size(model: VideoModel, weights: Weights | None) -> tuple[int, int]:
    """The bounds of a request without max_width/max_height: the model's native size, or a
    small one for tiny weights (a multiple of the model's size multiple)."""
    if weights is not None and weights.tiny:
        side = max(model.size_multiple, TINY_SIZE // model.size_multiple * model.size_multiple)
        return side, side
    return model.width, model.height


def default_steps(model: VideoModel, weights: Weights | None) -> int | None:
    """The step count of a request without num_inference_steps: the model's, or a few for
    tiny weights."""
    if weights is not None and weights.tiny and model.steps:
        return min(model.steps, TINY_STEPS)
    return model.steps


def default_frames(model: VideoModel, weights: Weights | None) -> int:
    """The frame count of a request without num_frames: the model's, or its fewest for tiny
    weights."""
    return model.min_frames if weights is not None and weights.tiny else model.frames


def check_provider_fields(model: VideoModel, request: VideoRequest) -> None:
    """A provider's model takes the fields it can pass on, within the provider's limits."""
    for field in sorted(request.model_fields_set - PROVIDER_FIELDS):
        raise InvalidField(
            f"{field} does not apply to {model.name}: the provider picks the size, frame rate "
            f"and steps; its fields: {', '.join(sorted(PROVIDER_FIELDS))}",
            field,
        )
    if request.seed is not None and request.seed > model.max_seed:
        raise InvalidField(
            f"seed {request.seed}: {model.name} takes seeds 0 to {model.max_seed}", "seed"
        )
    if len(request.prompt) > model.max_prompt_chars:
        raise InvalidField(
            f"prompt: {model.name} takes at most {model.max_prompt_chars} characters", "prompt"
        )


def check_frames_path(request: VideoRequest, services: Services) -> None:
    """output_frames_path: one run of '#' in its PNG file name, inside the allowed roots."""
    pattern = request.output_frames_path
    if pattern is None:
        return
    runs = FRAME_NUMBER.findall(Path(pattern).name)
    if len(runs) != 1:
        raise InvalidField(
            "output_frames_path: its file name needs one run of '#' for the frame number "
            f"(e.g. plate.####.png); {pattern!r} has {len(runs)}",
            "output_frames_path",
        )
    first = frame_path(pattern, request.start_frame)
    services.paths.resolve_output_path(first, "output_frames_path", (".png",))


def validate_request(request: VideoRequest, services: Services) -> VideoRequest:
    """Submit-time checks (4xx naming the field); returns the request with defaults filled."""
    model = find_model(request.model)
    reason = unavailable_reason(model, services)
    if reason is not None:
        raise InvalidField(reason, "model")
    mode = mode_of(request)
    if mode not in model.modes:
        raise InvalidField(
            f"model {model.name} makes videos from an image only: give input_image_path "
            "(text→video: ltx-video)",
            "input_image_path",
        )
    if model.external:
        check_provider_fields(model, request)
    elif not model.prompt and (request.prompt or request.negative_prompt):
        field = "prompt" if request.prompt else "negative_prompt"
        raise InvalidField(f"{field}: {model.name} takes no prompt (it animates the image)", field)
    if request.step_cache and not model.step_cache:
        raise InvalidField(
            f"step_cache: {model.name} has no transformer blocks to skip; the models that take "
            f"it: {', '.join(name for name, m in VIDEO_MODELS.items() if m.step_cache)}",
            "step_cache",
        )
    if request.step_cache and request.optimize_low_vram and model.offload_layers:
        raise InvalidField(
            f"step_cache: not with optimize_low_vram on {model.name}, whose layers are then "
            "streamed onto the GPU in the order of a full step, which a cached step breaks; "
            "ask for one or the other",
            "step_cache",
        )
    weights = None if model.external else services.find_weights(model.name, model.repo)
    requested = request.num_frames or default_frames(model, weights)
    try:
        frames = valid_frames(model, requested)
    except ValueError as exc:
        raise InvalidField(f"num_frames: {exc}", "num_frames") from None
    if request.output_video_path is not None:
        services.paths.resolve_output_path(
            request.output_video_path, "output_video_path", (".mp4",)
        )
    check_frames_path(request, services)
    inputs = InputImages(services)
    image_path = inputs.check(request.input_image_path, "input_image_path")
    width, height = default_size(model, weights)
    filled = request.model_copy(
        update={
            "input_image_path": image_path,
            "seed": (
                request.seed
                if request.seed is not None
                else random.randrange(min(2**31, model.max_seed + 1))
            ),
            "num_frames": frames,
            "num_inference_steps": request.num_inference_steps or default_steps(model, weights),
            "guidance_scale": (
                request.guidance_scale
                if request.guidance_scale is not None
                else model.guidance_scale
            ),
            "fps": request.fps or model.fps,
            "max_width": request.max_width or width,
            "max_height": request.max_height or height,
        }
    )
    inputs.save()
    return filled
