"""Runway image→video (gen4_turbo, gen3a_turbo) through Runway's official SDK (``runwayml``).

One call, ``generate``: the still goes as a data URI, the task is created with
``image_to_video.create``, polled with ``tasks.retrieve`` (its status and progress reported
as the job's progress), and its video downloaded from the task's output URL. A cancel while
the task runs deletes it at Runway (``tasks.delete``: Runway's cancel). Runway's errors fail
the job as ``provider_error`` with Runway's message.

The key and the address (``RUNWAYML_API_SECRET``, ``RUNWAYML_BASE_URL``) come from the
server's settings, passed to the client.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import runwayml
from PIL import Image
from runwayml.types.task_retrieve_response import Succeeded

from api.common.errors import JobFailure
from api.common.runtime import ModelRuntime
from api.videos.context import Clip, VideoContext
from api.videos.schemas import ProviderTask
from api.videos.settings import video_settings

log = logging.getLogger(__name__)

API_KEY_ENV = "RUNWAYML_API_SECRET"
# Runway: "The length of the encoded data URI must be under 5MB (1024 × 1024 × 5 bytes)".
MAX_DATA_URI_LENGTH = 5 * 1024 * 1024
# Runway: tasks are not updated more often than every five seconds (tasks.retrieve).
POLL_INTERVAL = 5.0
# A task not finished after this long (queued behind others at Runway, say) fails the job.
TASK_TIMEOUT = 30 * 60.0
MAX_SEED = 2**32 - 1  # Runway's seed: an integer 0-4294967295
MAX_PROMPT_LENGTH = 1000  # Runway's promptText: at most 1000 UTF-16 code units
# How often a cancel is looked for while waiting between polls, in seconds.
CANCEL_CHECK = 0.1


@dataclass(frozen=True)
class RunwayModel:
    """A Runway image→video model: what Runway accepts for it and what it makes."""

    name: str  # this server's model name
    model_id: str  # Runway's
    ratios: tuple[tuple[int, int], ...]  # the sizes Runway makes, width x height
    durations: tuple[int, ...]  # seconds
    default_duration: int = 5
    fps: int = 24
    retired: str | None = None  # the day Runway retired it: it then answers with an error


MODELS = {
    model.name: model
    for model in (
        # ratio and duration: runwayml 5.24.0's image_to_video types (Gen4Turbo) and the
        # duration note of runwayml 3.16-3.20 ("gen4_turbo must specify a duration of 2-10
        # seconds"); 24 fps: Runway's Gen-4 spec.
        RunwayModel(
            name="runway-gen4-turbo",
            model_id="gen4_turbo",
            ratios=((1280, 720), (720, 1280), (1104, 832), (832, 1104), (960, 960), (1584, 672)),
            durations=tuple(range(2, 11)),
        ),
        # runwayml 4.18.0, the last SDK typing gen3a_turbo (ratio "1280:768" | "768:1280",
        # duration 5 | 10); the SDK dropped it in 5.0.0 and Runway retired Gen-3 Alpha Turbo.
        RunwayModel(
            name="runway-gen3a-turbo",
            model_id="gen3a_turbo",
            ratios=((1280, 768), (768, 1280)),
            durations=(5, 10),
            retired="2026-07-30",
        ),
    )
}


@dataclass
class RunwayVideo:
    """Runway's video and how it was made. ``width``, ``height`` and ``frames`` are what
    Runway makes for the ratio and duration asked; the mp4 itself is the authority."""

    mp4: bytes
    task_id: str
    model_id: str
    ratio: str  # as sent, e.g. "1280:720"
    width: int
    height: int
    duration: int  # seconds
    fps: int
    frames: int
    seed: int
    image_format: str  # of the data URI sent: "png" or "jpeg"
    image_size: tuple[int, int]  # of the image sent
    polls: int
    timings: dict[str, float] = field(default_factory=dict)


def ratio_for(model: RunwayModel, width: int, height: int) -> tuple[int, int]:
    """The size Runway makes for ``model`` nearest (in log aspect) to ``width`` x ``height``;
    on a tie the one listed first."""
    aspect = width / height
    return min(model.ratios, key=lambda size: abs(math.log(aspect * size[1] / size[0])))


def duration_for(model: RunwayModel, num_frames: int | None) -> int:
    """The allowed duration (seconds) whose frame count is nearest to ``num_frames`` (the
    model's default duration when None); on a tie the shorter."""
    if num_frames is None:
        return model.default_duration
    return min(model.durations, key=lambda seconds: abs(seconds * model.fps - num_frames))


def data_uri(image: Image.Image, limit: int = MAX_DATA_URI_LENGTH) -> tuple[str, str, Image.Image]:
    """The image as a base64 data URI shorter than ``limit``: PNG (lossless) when it fits,
    else JPEG, shrunk (aspect kept) until it fits. Returns (URI, format, image sent)."""
    picture = image if image.mode == "RGB" else image.convert("RGB")
    uri = _encoded(picture, "PNG")
    if len(uri) < limit:
        return uri, "png", picture
    while True:
        uri = _encoded(picture, "JPEG")
        if len(uri) < limit:
            return uri, "jpeg", picture
        scale = min(0.9, math.sqrt(limit / len(uri)))
        size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
        if size == picture.size:
            raise ValueError(f"an image can't be sent as a data URI under {limit} characters")
        picture = picture.resize(size, Image.Resampling.LANCZOS)


def _encoded(image: Image.Image, format: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 95} if format == "JPEG" else {}))
    return f"data:image/{format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def provider_message(exc: runwayml.RunwayMLError) -> str:
    """Runway's own words for a failure (its answers carry ``{"error": message}``)."""
    body = getattr(exc, "body", None)
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message:
        message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, runwayml.APIStatusError):
        return f"{message} (HTTP {exc.status_code})"
    if isinstance(exc, runwayml.APIConnectionError) and exc.__cause__ is not None:
        return f"{message} {exc.__cause__}"
    return message


def generate(
    model: RunwayModel,
    image: Image.Image,
    prompt: str | None,
    seed: int,
    duration: int,
    progress: Callable[[int, int], None],
    check_cancelled: Callable[[], None],
    *,
    api_key: str | None,
    base_url: str | None = None,
    on_status: Callable[[str, str], None] | None = None,
    poll_interval: float = POLL_INTERVAL,
    timeout: float = TASK_TIMEOUT,
) -> RunwayVideo:
    """Make a video from ``image`` at Runway and download it.

    ``progress(step, 100)`` reports Runway's progress in percent (0 while the task waits,
    100 once the video is downloaded); it and ``check_cancelled()`` raise to cancel, which
    deletes the task at Runway before the exception goes on. ``on_status(task_id, status)``
    hears each status Runway reports (PENDING, THROTTLED, RUNNING, SUCCEEDED, ...).
    """
    if duration not in model.durations:
        raise ValueError(f"{model.name} makes {list(model.durations)} s videos, not {duration}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"Runway's seed is 0-{MAX_SEED}, not {seed}")
    if not api_key:
        raise JobFailure(
            f"Runway: no API key: set {API_KEY_ENV} in the server's environment and restart "
            "the server",
            type="provider_error",
        )
    uri, image_format, sent = data_uri(image)
    width, height = ratio_for(model, image.width, image.height)
    ratio = f"{width}:{height}"
    arguments: dict[str, Any] = {
        "model": model.model_id,
        "prompt_image": uri,
        "ratio": ratio,
        "duration": duration,
        "seed": seed,
    }
    if prompt:
        arguments["prompt_text"] = prompt
    progress(0, 100)  # also where a cancel before the call is honoured
    started = time.perf_counter()
    client = runwayml.RunwayML(api_key=api_key, base_url=base_url)
    try:
        task_id = client.image_to_video.create(**arguments).id
    except runwayml.RunwayMLError as exc:
        raise JobFailure(f"Runway: {provider_message(exc)}", type="provider_error") from exc
    log.info("Runway task %s: %s, %s, %d s", task_id, model.model_id, ratio, duration)
    try:
        task, polls = _wait(
            client, task_id, progress, check_cancelled, on_status, poll_interval, timeout
        )
    except BaseException:  # a cancel, a stop, a failed poll: the task must not run on
        _delete(client, task_id)
        raise
    if task.status == "FAILED":
        code = f" ({task.failure_code})" if task.failure_code else ""
        raise JobFailure(
            f"Runway: task {task_id} failed: {task.failure}{code}", type="provider_error"
        )
    if task.status == "CANCELLED":
        raise JobFailure(f"Runway: task {task_id} was cancelled at Runway", "provider_error")
    if not isinstance(task, Succeeded) or not task.output:
        raise JobFailure(f"Runway: task {task_id} succeeded without an output", "provider_error")
    finished = time.perf_counter()
    mp4 = _download(task.output[0], check_cancelled)
    progress(100, 100)
    return RunwayVideo(
        mp4=mp4,
        task_id=task_id,
        model_id=model.model_id,
        ratio=ratio,
        width=width,
        height=height,
        duration=duration,
        fps=model.fps,
        frames=duration * model.fps,
        seed=seed,
        image_format=image_format,
        image_size=sent.size,
        polls=polls,
        timings={"provider_s": finished - started, "download_s": time.perf_counter() - finished},
    )


def _wait(
    client: runwayml.RunwayML,
    task_id: str,
    progress: Callable[[int, int], None],
    check_cancelled: Callable[[], None],
    on_status: Callable[[str, str], None] | None,
    poll_interval: float,
    timeout: float,
) -> tuple[runwayml.types.TaskRetrieveResponse, int]:
    """Poll the task until it ends: (its last state, the number of polls)."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        _sleep(poll_interval, check_cancelled)
        try:
            task = client.tasks.retrieve(task_id)
        except runwayml.RunwayMLError as exc:
            raise JobFailure(f"Runway: {provider_message(exc)}", type="provider_error") from exc
        polls += 1
        log.debug("Runway task %s: %s", task_id, task.status)
        if on_status is not None:
            on_status(task_id, task.status)
        if task.status in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return task, polls
        percent = math.floor(task.progress * 100) if task.status == "RUNNING" else 0
        progress(min(max(percent, 0), 99), 100)
        if time.monotonic() > deadline:
            raise JobFailure(
                f"Runway: task {task_id} did not finish in {timeout:.0f} s (still "
                f"{task.status}); cancelling it at Runway",
                type="provider_error",
            )


def _sleep(seconds: float, check_cancelled: Callable[[], None]) -> None:
    """Wait ``seconds``, looking for a cancel every ``CANCEL_CHECK`` seconds."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        check_cancelled()
        time.sleep(min(left, CANCEL_CHECK))
    check_cancelled()


def _delete(client: runwayml.RunwayML, task_id: str) -> None:
    """Cancel (or delete) the task at Runway; a failure to do so is logged, not raised."""
    try:
        client.tasks.delete(task_id)
    except runwayml.RunwayMLError as exc:
        log.warning("Runway task %s could not be cancelled: %s", task_id, provider_message(exc))
    else:
        log.info("Runway task %s cancelled", task_id)


def _download(url: str, check_cancelled: Callable[[], None]) -> bytes:
    """The task's output (no Runway credentials go with it: it is a signed URL)."""
    chunks = []
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            if response.status_code != 200:
                raise JobFailure(
                    f"Runway: the video could not be downloaded (HTTP {response.status_code})",
                    type="provider_error",
                )
            for chunk in response.iter_bytes():
                check_cancelled()
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise JobFailure(
            f"Runway: the video could not be downloaded: {exc}", type="provider_error"
        ) from exc
    data = b"".join(chunks)
    if data[4:8] != b"ftyp":  # every mp4 starts with its ftyp box
        raise JobFailure("Runway: the output is not an mp4 video", type="provider_error")
    return data


def run(ctx: VideoContext, runtime: ModelRuntime) -> tuple[Clip, dict[str, float]]:
    """A job's Runway video: the still sent, the task polled (its status shown in the job's
    progress), the mp4 it made."""
    settings = video_settings(runtime.services.settings)
    model = MODELS[ctx.model.name]
    if ctx.image is None:
        raise JobFailure(f"{model.name} makes videos from an image only", "invalid_input")
    status = {"text": "submitting"}

    def on_status(task_id: str, state: str) -> None:
        status["text"] = f"{state} (Runway task {task_id})"

    def progress(step: int, total: int) -> None:
        runtime.progress(step, total, status=status["text"])

    key = settings.runwayml_api_secret
    video = generate(
        model,
        ctx.image,
        ctx.request.prompt or None,
        ctx.seed,
        duration_for(model, ctx.frames),
        progress,
        runtime.check_cancelled,
        api_key=key.get_secret_value() if key else None,
        base_url=settings.runwayml_base_url,
        on_status=on_status,
        poll_interval=settings.runway_poll_seconds,
    )
    task = ProviderTask(
        provider="runway",
        task_id=video.task_id,
        model_id=video.model_id,
        ratio=video.ratio,
        duration_seconds=video.duration,
    )
    return Clip(mp4=video.mp4, provider_task=task), dict(video.timings)
