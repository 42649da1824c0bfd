"""Requests and results of the videos domain (DESIGN §3.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.common.domain import ModelInfo
from api.common.jobs.schemas import job_model
from api.common.schemas import InputPath, JobRequest, Name, OutputPath, Precision, Prompt
from api.videos.registry import VideoMode

MAX_SIDE = 4096
MAX_STEPS = 500
MAX_FRAMES = 100_000  # a bound on the field; each model's own range is checked at submit


class VideoRequest(JobRequest):
    """Image→video (with input_image_path), or text→video (without, where the model can)."""

    model: Name = Field(description="Model name, as listed by GET /api/models (e.g. ltx-video).")
    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    input_image_path: InputPath | None = Field(
        None,
        description="The still to animate: a path on shared storage, a path from "
        "POST /api/files, or a data: URL. Required by image-only models.",
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Random when absent; the seed used is recorded."
    )
    num_frames: int | None = Field(
        None,
        ge=1,
        le=MAX_FRAMES,
        description="Frames to make; rounded to the nearest count the model can make "
        "(e.g. LTX-Video 8k+1), which the job's request then shows. The model's default "
        "when absent.",
    )
    num_inference_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Model default when absent."
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=100, description="Model default when absent."
    )
    max_width: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Bound on the width; the model's when absent."
    )
    max_height: int | None = Field(
        None, ge=16, le=MAX_SIDE, description="Bound on the height; the model's when absent."
    )
    fps: float | None = Field(
        None,
        gt=0,
        le=240,
        description="Frame rate of the mp4 (and what SVD and LTX-Video are conditioned on); "
        "the model's when absent.",
    )
    output_video_path: OutputPath | None = Field(
        None,
        description="Where to write the .mp4 (a timestamped take is kept in <dir>/tmp/). "
        "Absent: the data dir, served at /api/files.",
    )
    output_frames_path: OutputPath | None = Field(
        None,
        description="Also write each frame as a PNG: a path whose file name holds one run of "
        "#, the frame number's padding, e.g. /show/sh010/gen/plate.####.png.",
    )
    start_frame: int = Field(1, ge=0, le=10_000_000, description="The first frame's number.")
    optimize_low_vram: bool = Field(
        False,
        description="On CUDA: keep idle model parts on the CPU (slower, far less GPU memory; "
        "Wan 2.1 offloads layer by layer).",
    )
    step_cache: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Faster, and the frames change (First Block Cache): the transformer's "
        "first block runs every step; where its change to the latents differs from the last "
        "fully computed step's by less than this fraction (mean relative difference), the "
        "other blocks are skipped and their last change reused. 0.05-0.1 is typical; higher "
        "skips more. Off when absent or 0. GET /api/models says which models take it.",
    )


class VideoOutput(BaseModel):
    path: str = Field(description="Where the mp4 was written (in the client's form).")
    url: str = Field(description="The same bytes over HTTP: a signed link.")
    frames: int
    fps: float
    width: int
    height: int
    take_path: str | None = Field(None, description="Its timestamped take in <dir>/tmp/.")


class ProviderTask(BaseModel):
    """A job done at a provider: what it was asked and what it answered."""

    provider: Literal["runway"]
    task_id: str
    model_id: str
    ratio: str
    duration_seconds: int


class StepCacheReport(BaseModel):
    """What step_cache did: of the denoiser's calls (two a step with separate guidance calls),
    how many reused the cached blocks."""

    threshold: float
    calls: int
    reused: int


class VideoResult(BaseModel):
    video: VideoOutput
    frame_paths: list[str] | None = Field(
        None, description="With output_frames_path: each frame's PNG, in order."
    )
    seed: int
    mode: VideoMode
    tiny_weights: bool
    precision: Precision = None
    timings: dict[str, float]
    provider_task: ProviderTask | None = None
    step_cache: StepCacheReport | None = Field(
        None, description="With step_cache: how many denoiser calls it skipped."
    )


class FramesInfo(BaseModel):
    rule: str = Field(description='Which counts the model makes, e.g. "8k+1", or "any".')
    min: int
    max: int
    default: int


class VideoModelInfo(ModelInfo):
    """A video model (GET /api/models)."""

    domain: Literal["videos"] = "videos"
    frames: FramesInfo
    step_cache: bool = Field(False, description="Whether the model takes step_cache.")


VideoJob = job_model("videos", "VideoJob", VideoRequest, VideoResult)
