"""A validated video request resolved for a run (``build_context``), and what a model run
gives back (``Clip``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from api.common.errors import InvalidField
from api.common.media import open_image
from api.common.names import did_you_mean
from api.common.services import Services
from api.videos.registry import VIDEO_MODELS, VideoMode, VideoModel, video_size
from api.videos.schemas import ProviderTask, StepCacheReport, VideoRequest

# The frame number's place in output_frames_path: one run of '#', its length the padding.
FRAME_NUMBER = re.compile(r"#+")


def find_model(name: str) -> VideoModel:
    model = VIDEO_MODELS.get(name)
    if model is None:
        raise InvalidField(
            f"unknown video model {name!r}{did_you_mean(name, VIDEO_MODELS, quote=True)}; "
            f"choose one of {', '.join(VIDEO_MODELS)}",
            "model",
        )
    return model


def mode_of(request: VideoRequest) -> VideoMode:
    """Image→video with an input image, text→video without."""
    return VideoMode.image_to_video if request.input_image_path else VideoMode.text_to_video


def frame_path(pattern: str, number: int) -> str:
    """``pattern`` (e.g. ``plate.####.png``) with its run of '#' replaced by ``number``,
    zero-padded to the run's length."""
    name = Path(pattern).name
    run = FRAME_NUMBER.search(name)
    if run is None:
        raise ValueError(f"no '#' in {pattern!r}")
    numbered = name[: run.start()] + str(number).zfill(len(run.group())) + name[run.end() :]
    return str(Path(pattern).with_name(numbered))


@dataclass
class VideoContext:
    """A request resolved for a run: the model, its mode, the size, frame count and rate,
    the input image (resized to the size) and where the outputs go."""

    model: VideoModel
    mode: VideoMode
    request: VideoRequest
    width: int
    height: int
    frames: int
    fps: float
    seed: int
    image: Image.Image | None
    output_path: Path | None  # the mp4's; None: the data dir


@dataclass
class Clip:
    """What a model run made: frames (uint8 RGB, (frames, height, width, 3)) to encode, or
    an mp4 a provider made; the provider's task, for a provider's; what step_cache did."""

    frames: np.ndarray | None = None
    mp4: bytes | None = None
    provider_task: ProviderTask | None = None
    step_cache: StepCacheReport | None = None


def build_context(request: VideoRequest, services: Services) -> VideoContext:
    """Resolve a validated request again at run time (files may have changed since submit)."""
    model = find_model(request.model)
    image = None
    if request.input_image_path:
        path = services.paths.resolve_input_path(request.input_image_path, "input_image_path")
        image = open_image(path, "input_image_path").convert("RGB")
    assert request.max_width and request.max_height and request.num_frames  # filled at submit
    width, height = video_size(
        model, request.max_width, request.max_height, image.size if image else None
    )
    if image is not None and not model.external and image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    output = None
    if request.output_video_path:
        output = services.paths.resolve_output_path(
            request.output_video_path, "output_video_path", (".mp4",)
        )
    return VideoContext(
        model=model,
        mode=mode_of(request),
        request=request,
        width=width,
        height=height,
        frames=request.num_frames,
        fps=request.fps or model.fps,
        seed=request.seed or 0,
        image=image,
        output_path=output,
    )
