"""The video models: user-facing names → family, weights, what they can do, their defaults,
and the rules their sizes and frame counts follow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class VideoMode(StrEnum):
    image_to_video = "image_to_video"
    text_to_video = "text_to_video"


IMAGE_ONLY = frozenset({VideoMode.image_to_video})
IMAGE_OR_TEXT = frozenset({VideoMode.image_to_video, VideoMode.text_to_video})


@dataclass(frozen=True)
class VideoModel:
    """One video model. Valid frame counts are ``min_frames + k * frame_step`` up to
    ``max_frames`` (LTX-Video: 9, 17, ... 257, i.e. 8k+1); a frame_step of 1 takes any count
    in the range. Width and height must be multiples of ``size_multiple``."""

    name: str
    family: str  # svd | cogvideox | ltx | wan | runway
    repo: str  # Hugging Face repo id of the weights (or the provider's model id)
    modes: frozenset[VideoMode]
    width: int  # native size: the default bounds of a request
    height: int
    frames: int  # default frame count
    frame_step: int
    min_frames: int
    max_frames: int
    fps: float
    size_multiple: int
    steps: int | None = None
    guidance_scale: float | None = None
    prompt: bool = True  # whether the model takes a text prompt
    negative_prompt: bool = True
    external: bool = False  # runs at a provider: no local weights
    api_key_env: str | None = None  # external: the environment variable with the provider's key
    # the repo's half-precision copy of its weights (e.g. "fp16"): what a GPU loads from it
    variant: str | None = None
    retired: str | None = None  # external: the day the provider retired it (it then refuses)
    max_seed: int = 2**63 - 1  # a provider may take less (Runway: 32 bits)
    max_prompt_chars: int = 10_000  # a provider may take less (Runway: 1000)
    # step_cache: a transformer whose pipeline names its denoiser calls (diffusers' First
    # Block Cache needs both)
    step_cache: bool = False
    # optimize_low_vram offloads groups of layers, streamed onto the GPU in the order of the
    # first call, rather than whole models (a model that doesn't fit a 24 GB card even alone)
    offload_layers: bool = False

    @property
    def frames_rule(self) -> str:
        """The frame-count rule in the usual notation: "8k+1", or "any" count in the range."""
        if self.frame_step == 1:
            return "any"
        offset = self.min_frames % self.frame_step
        return f"{self.frame_step}k+{offset}" if offset else f"{self.frame_step}k"


VIDEO_MODELS: dict[str, VideoModel] = {
    model.name: model
    for model in (
        # Stable Video Diffusion XT. Native 1024x576 and 25 frames (the -xt checkpoint is
        # fine-tuned for 25 frames: diffusers' SVD guide and pipeline docstring); any count from
        # 2 up to those 25. Sizes: multiples of 8 (the pipeline's check_inputs). fps 7 and 25
        # steps: the pipeline's defaults (the UNet is micro-conditioned on fps - 1). Guidance
        # is the last frame's: SVD ramps it from 1.0 on the first frame (max_guidance_scale,
        # default 3.0). It takes no text prompt.
        VideoModel(
            "stable-video-diffusion",
            "svd",
            "stabilityai/stable-video-diffusion-img2vid-xt",
            IMAGE_ONLY,
            width=1024,
            height=576,
            frames=25,
            frame_step=1,
            min_frames=2,
            max_frames=25,
            fps=7,
            size_multiple=8,
            steps=25,
            guidance_scale=3.0,
            prompt=False,
            negative_prompt=False,
            variant="fp16",
        ),
        # CogVideoX 1.5 I2V (model card): 1360x768 (min side 768, max side <= 1360, multiples
        # of 16 = VAE 8 x patch 2), frames 16N+1 with N <= 10 (default 81: 5 s at 16 fps; 161:
        # 10 s), 50 steps, guidance 6 (the card's example).
        VideoModel(
            "cogvideox",
            "cogvideox",
            "THUDM/CogVideoX1.5-5B-I2V",
            IMAGE_ONLY,
            width=1360,
            height=768,
            frames=81,
            frame_step=16,
            min_frames=17,
            max_frames=161,
            fps=16,
            size_multiple=16,
            steps=50,
            guidance_scale=6.0,
            step_cache=True,
        ),
        # LTX-Video 0.9 (diffusers' LTX docs and pipeline): 24 fps at 768x512, sizes multiples
        # of 32 (check_inputs), frames 8k+1 (VAE: 8 frames per latent), at most 257 (the
        # model card; LTX-Video's inference.py MAX_NUM_FRAMES), 161 by default; 50 steps and
        # guidance 3 are the pipeline's defaults. Image or text (LTXPipeline).
        VideoModel(
            "ltx-video",
            "ltx",
            "Lightricks/LTX-Video",
            IMAGE_OR_TEXT,
            width=768,
            height=512,
            frames=161,
            frame_step=8,
            min_frames=9,
            max_frames=257,
            fps=24,
            size_multiple=32,
            steps=50,
            guidance_scale=3.0,
            step_cache=True,
        ),
        # Wan 2.1 I2V 14B 480P (diffusers' Wan pipeline and docs): 832x480, sizes multiples of
        # 16 (check_inputs: VAE 8 x patch 2), frames 4k+1 (the pipeline rounds others), 81 by
        # default and at most (5 s at 16 fps, the length it was trained on), 50 steps,
        # guidance 5.
        VideoModel(
            "wan-2.1",
            "wan",
            "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
            IMAGE_ONLY,
            width=832,
            height=480,
            frames=81,
            frame_step=4,
            min_frames=5,
            max_frames=81,
            fps=16,
            size_multiple=16,
            steps=50,
            guidance_scale=5.0,
            step_cache=True,
            offload_layers=True,
        ),
        # Runway (external, through the runwayml SDK; models/runway.py has what Runway accepts):
        # clips of whole seconds at 24 fps (gen3a_turbo 5 or 10 s, gen4_turbo 2-10 s); the size
        # is the ratio Runway accepts for the model nearest to the input's aspect.
        VideoModel(
            "runway-gen3a-turbo",
            "runway",
            "gen3a_turbo",
            IMAGE_ONLY,
            width=1280,
            height=768,
            frames=120,
            frame_step=120,
            min_frames=120,
            max_frames=240,
            fps=24,
            size_multiple=1,
            negative_prompt=False,
            external=True,
            api_key_env="RUNWAYML_API_SECRET",
            retired="2026-07-30",
            max_seed=2**32 - 1,
            max_prompt_chars=1000,
        ),
        VideoModel(
            "runway-gen4-turbo",
            "runway",
            "gen4_turbo",
            IMAGE_ONLY,
            width=1280,
            height=720,
            frames=120,
            frame_step=24,
            min_frames=48,
            max_frames=240,
            fps=24,
            size_multiple=1,
            negative_prompt=False,
            external=True,
            api_key_env="RUNWAYML_API_SECRET",
            max_seed=2**32 - 1,
            max_prompt_chars=1000,
        ),
    )
}


def valid_frames(model: VideoModel, requested: int) -> int:
    """The valid frame count nearest to ``requested`` (halfway rounds up). Raises ValueError
    when that count is outside the model's range."""
    steps = math.floor((requested - model.min_frames) / model.frame_step + 0.5)
    frames = model.min_frames + model.frame_step * steps
    if not model.min_frames <= frames <= model.max_frames:
        raise ValueError(
            f"{model.name} makes {model.min_frames} to {model.max_frames} frames "
            f"({model.frames_rule}); {requested} is out of range"
        )
    return frames


def video_size(
    model: VideoModel, max_width: int, max_height: int, image_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The output size: with an input image of ``image_size`` (width, height), its aspect ratio
    scaled to fit the bounds; text→video, the bounds themselves. Each side is rounded down to
    the model's size multiple (never below it)."""
    if image_size is None:
        width, height = max_width, max_height
    else:
        image_width, image_height = image_size
        # exact integer arithmetic: the side that meets its bound is the bound itself
        if max_width * image_height <= max_height * image_width:
            width, height = max_width, image_height * max_width // image_width
        else:
            width, height = image_width * max_height // image_height, max_height
    multiple = model.size_multiple
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)
