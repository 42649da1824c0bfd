"""Text-prompted segmentation: Grounding DINO finds boxes for the prompt, SAM turns each box
into a mask.

Outputs: the combined "clown" mask (each object filled with its own colour from PALETTE, best
score on top where objects overlap, black background) and one 8-bit mask per object, with the
prompt words that matched it (``label``) and its detection score.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import nms
from transformers import (
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    SamModel,
    SamProcessor,
)

from api.common.errors import JobFailure
from api.common.models import CacheKey, Weights
from api.common.runtime import ModelRuntime
from api.images.context import ImageContext, Picture
from api.images.registry import SEGMENT_MAX_OBJECTS, SEGMENT_NMS_IOU
from api.images.schemas import SegmentationRequest

# One colour per object, in score order: primaries, secondaries, then mixes (10 = the most
# objects kept), all far apart so a keyer can pull each one.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
    (128, 0, 255),
    (0, 255, 128),
    (255, 0, 128),
)


@dataclass
class Detection:
    box: list[float]  # x0, y0, x1, y1 in input pixels
    score: float
    label: str


@dataclass
class Segmenter:
    """Grounding DINO and SAM, loaded together on one device."""

    detector_processor: Any
    detector: Any
    sam_processor: Any
    sam: Any
    device: str


def load_segmenter(detector: Weights, sam: Weights, device: str) -> Segmenter:
    """Float32 on every device: both models are small, and Grounding DINO's deformable
    attention is not reliable in half precision."""
    return Segmenter(
        AutoProcessor.from_pretrained(detector.location),
        AutoModelForZeroShotObjectDetection.from_pretrained(
            detector.location, dtype=torch.float32, device_map=device
        ).eval(),
        SamProcessor.from_pretrained(sam.location),
        SamModel.from_pretrained(sam.location, dtype=torch.float32, device_map=device).eval(),
        device,
    )


def detector_prompt(prompt: str) -> str:
    """Grounding DINO's form: lower case, one phrase per '.', ending with '.'.
    Commas, semicolons and new lines separate phrases too ("car, person" -> "car. person.")."""
    phrases = [p.strip() for p in re.split(r"[.,;\n]", prompt.lower())]
    return " ".join(f"{phrase}." for phrase in phrases if phrase)


def _clean_label(text: str, special: set[str]) -> str:
    words = [w for w in text.split() if w not in special]
    return " ".join(words).replace(" .", ".").strip(" .")


@torch.inference_mode()
def detect(
    segmenter: Segmenter,
    image: Image.Image,
    prompt: str,
    box_threshold: float,
    text_threshold: float,
) -> list[Detection]:
    """Boxes for the prompt, best first: above box_threshold, overlapping a better box by
    at most SEGMENT_NMS_IOU, at most SEGMENT_MAX_OBJECTS."""
    processor = segmenter.detector_processor
    inputs = processor(images=image, text=detector_prompt(prompt), return_tensors="pt").to(
        segmenter.device
    )
    outputs = segmenter.detector(**inputs)
    found = processor.post_process_grounded_object_detection(
        outputs,
        inputs["input_ids"],
        threshold=box_threshold,
        text_threshold=text_threshold,
        target_sizes=[(image.height, image.width)],
    )[0]
    boxes = found["boxes"].float().cpu()
    scores = found["scores"].float().cpu()
    if not len(scores):
        return []
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
    keep = nms(boxes, scores, SEGMENT_NMS_IOU)[:SEGMENT_MAX_OBJECTS].tolist()
    special = set(processor.tokenizer.all_special_tokens)
    labels = found["text_labels"]
    return [
        Detection(boxes[i].tolist(), float(scores[i]), _clean_label(labels[i], special))
        for i in keep
    ]


@torch.inference_mode()
def segment(segmenter: Segmenter, image: Image.Image, detections: list[Detection]) -> np.ndarray:
    """One boolean HxW mask per detection (N x H x W), SAM's single-mask output for its box."""
    processor = segmenter.sam_processor
    inputs = processor(
        images=image, input_boxes=[[d.box for d in detections]], return_tensors="pt"
    ).to(segmenter.device)
    outputs = segmenter.sam(**inputs, multimask_output=False)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks.cpu(),
        inputs["original_sizes"].cpu(),
        inputs["reshaped_input_sizes"].cpu(),
    )[0]
    return masks[:, 0].numpy().astype(bool)


def combined_mask(masks: np.ndarray) -> Image.Image:
    """Each mask in its PALETTE colour on black; the first (best) mask wins where they overlap."""
    height, width = masks.shape[1:]
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for index in reversed(range(len(masks))):
        pixels[masks[index]] = PALETTE[index % len(PALETTE)]
    return Image.fromarray(pixels)


def run(
    ctx: ImageContext[SegmentationRequest], runtime: ModelRuntime
) -> tuple[list[Picture], dict[str, float]]:
    """Segment what the prompt names; fails the job when nothing is found."""
    assert ctx.image is not None  # a task's request requires its input image
    started = time.perf_counter()
    model, request = ctx.model, ctx.request
    sam_weights = runtime.weights(model.name, model.repo)
    detector_weights = runtime.weights(*model.extra_weights[0])
    segmenter = runtime.resident(
        CacheKey(model.name),
        lambda: load_segmenter(detector_weights, sam_weights, runtime.device),
        sam_weights,
    )
    loaded_at = time.perf_counter()
    image = ctx.image.convert("RGB")
    detections = detect(
        segmenter, image, request.prompt, request.box_threshold, request.text_threshold
    )
    runtime.progress(1, 2)
    detected_at = time.perf_counter()
    if not detections:
        raise JobFailure(
            f"no objects found for prompt {request.prompt!r} with box_threshold "
            f"{request.box_threshold} and text_threshold {request.text_threshold}; lower the "
            "thresholds or name the objects differently",
            type="nothing_found",
        )
    masks = segment(segmenter, image, detections)
    runtime.progress(2, 2)
    finished = time.perf_counter()
    pictures = [Picture(combined_mask(masks))]
    pictures += [
        Picture(
            Image.fromarray(mask.astype(np.uint8) * 255),
            name=f"mask_{index}",
            label=detection.label,
            score=round(detection.score, 4),
        )
        for index, (mask, detection) in enumerate(zip(masks, detections, strict=True))
    ]
    timings = {
        "load_s": loaded_at - started,
        "detect_s": detected_at - loaded_at,
        "segment_s": finished - detected_at,
    }
    return pictures, timings
