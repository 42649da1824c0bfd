"""Depth Anything V2: monocular depth of the input image, at the input's size.

The model predicts relative inverse depth (larger = nearer). ``depth_format`` picks the output:
png8 and png16 are that prediction normalised to the full range (white = near), exr is the
prediction itself as float32. ``estimate_depth`` gives other modules (ControlNet preprocessing)
the same model's 8-bit map.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from api.common.models import CacheKey, Weights
from api.common.runtime import ModelRuntime
from api.images.context import DEPTH_MODEL, ImageContext, Picture
from api.images.registry import IMAGE_MODELS
from api.images.schemas import DepthRequest


@dataclass
class DepthModel:
    processor: Any
    model: Any
    device: str

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> np.ndarray:
        """Float32 HxW depth at the image's own size."""
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        depth = self.processor.post_process_depth_estimation(
            outputs, target_sizes=[(image.height, image.width)]
        )[0]["predicted_depth"]
        return depth.float().cpu().numpy().reshape(image.height, image.width)


def load_depth_model(weights: Weights, device: str) -> DepthModel:
    """Float32 on every device: the model is small and EXR outputs keep full precision."""
    processor = AutoImageProcessor.from_pretrained(weights.location)
    model = AutoModelForDepthEstimation.from_pretrained(
        weights.location, dtype=torch.float32, device_map=device
    )
    return DepthModel(processor, model.eval(), device)


def _model(runtime: ModelRuntime) -> DepthModel:
    model = IMAGE_MODELS[DEPTH_MODEL]
    weights = runtime.weights(model.name, model.repo)
    return runtime.resident(
        CacheKey(model.name), lambda: load_depth_model(weights, runtime.device), weights
    )


def normalised(depth: np.ndarray) -> np.ndarray:
    """Depth scaled to 0..1 over its own range (all zeros for a flat prediction)."""
    low, high = float(depth.min()), float(depth.max())
    if not high > low:
        return np.zeros_like(depth, dtype=np.float32)
    return ((depth - low) / (high - low)).astype(np.float32)


def to_png8(depth: np.ndarray) -> Image.Image:
    return Image.fromarray((normalised(depth) * 255).round().astype(np.uint8))


def to_png16(depth: np.ndarray) -> Image.Image:
    """A 16-bit grey image (mode I;16)."""
    return Image.fromarray((normalised(depth) * 65535).round().astype(np.uint16))


def estimate_depth(image: Image.Image, runtime: ModelRuntime) -> Image.Image:
    """An 8-bit RGB depth map of ``image`` (same size, white = near), e.g. for a depth
    ControlNet. Loads (and keeps resident) the depth-anything model on ``runtime.device``."""
    return to_png8(_model(runtime).predict(image)).convert("RGB")


def run(
    ctx: ImageContext[DepthRequest], runtime: ModelRuntime
) -> tuple[list[Picture], dict[str, float]]:
    """The input image's depth in the request's depth_format; and the load/run timings."""
    assert ctx.image is not None  # a task's request requires its input image
    started = time.perf_counter()
    depth_model = _model(runtime)
    loaded_at = time.perf_counter()
    depth = depth_model.predict(ctx.image)
    runtime.progress(1, 1)
    finished = time.perf_counter()
    fmt = ctx.request.depth_format
    if fmt == "png16":
        picture = Picture(to_png16(depth))
    elif fmt == "exr":
        picture = Picture(to_png8(depth), array=depth)  # the EXR is written from ``array``
    else:
        picture = Picture(to_png8(depth))
    return [picture], {"load_s": loaded_at - started, "inference_s": finished - loaded_at}
