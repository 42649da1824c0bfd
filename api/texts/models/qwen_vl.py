"""Qwen2.5-VL: chat about text, images and video, as its model card runs it with transformers.

``load`` puts ``Qwen2_5_VLForConditionalGeneration`` and its processor on one device (bf16 and
SDPA attention on CUDA, fp32 on CPU), to be kept resident. ``chat`` turns resolved messages into
the model's inputs with the processor's chat template, generates, and returns the answer and
the token counts. ``sample_video_frames`` reads a video file's frames at the rate Qwen's own
tools use.

Sampling never touches torch's global random state, which every thread of the process shares
(the runner threads of other devices too): the next token is drawn by a logits processor with
its own ``torch.Generator`` seeded from the request, and generate's greedy step then picks it.
So the same messages and seed give the same answer on the same device, whatever else runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.generation.streamers import BaseStreamer

from api.common.errors import JobFailure
from api.common.pipelines import allow_compiled_graphs

# Pixels an image or video frame is resized to (keeping its aspect ratio, sides multiples of
# 28: one token per 28x28 pixels, per 2 frames for video). Images: at most 1280 tokens, the
# upper bound Qwen's model card suggests (the repository's own limit, 16384 tokens, would let a
# 4K plate fill half the context). Video frames: between 128 and 768 tokens, qwen-vl-utils'
# bounds (the repository has no video settings: its image ones would apply).
IMAGE_MAX_PIXELS = 1280 * 28 * 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
# Static key/value caches (compiled decoding) are this many tokens long, or a multiple.
CACHE_BUCKET = 1024
# The processor refuses images and frames longer than this many times their width, or wider.
MAX_ASPECT_RATIO = 200

# progress(tokens generated, max_tokens, the answer's text so far); may raise to stop.
Progress = Callable[[int, int, str], None]


class QwenVL(NamedTuple):
    """A loaded model and its processor (tokenizer, image and video processors, template)."""

    model: Any  # Qwen2_5_VLForConditionalGeneration
    processor: Any  # Qwen2_5_VLProcessor


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # the rendered conversation, image and video tokens included
    completion_tokens: int  # generated, the closing <|im_end|> included


@dataclass(frozen=True)
class VideoClip:
    """Frames sampled from a video, ``fps`` of them per second of the video."""

    frames: list[Image.Image]
    fps: float


def load(weights_location: str, device: str) -> QwenVL:
    """The model straight onto ``device`` (bf16 + SDPA on CUDA, fp32 on CPU) and its processor,
    from a folder or a Hugging Face repo id. Call it inside ``building_models(device)``."""
    on_gpu = device.startswith("cuda")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        weights_location,
        dtype=torch.bfloat16 if on_gpu else torch.float32,
        attn_implementation="sdpa",
        device_map={"": device},
    )
    model.eval()
    return QwenVL(model, AutoProcessor.from_pretrained(weights_location))


def chat(
    model: Any,
    processor: Any,
    messages: Sequence[dict[str, Any]],
    *,
    temperature: float,
    seed: int,
    max_tokens: int,
    progress: Progress | None = None,
    check_cancelled: Callable[[], None] | None = None,
    context_length: int | None = None,
    compile_decoding: bool = False,
) -> tuple[str, Usage]:
    """The assistant's answer to ``messages`` and the token counts.

    ``messages``: ``[{"role": "system" | "user" | "assistant", "content": str | [part]}]`` with
    parts ``{"type": "text", "text": str}``, ``{"type": "image", "image": PIL.Image}`` and
    ``{"type": "video", "frames": [PIL.Image] | array (frames, height, width, 3), "fps": float}``
    (see ``sample_video_frames``), in any message. ``temperature`` 0 is greedy; above 0 the
    answer is sampled with ``seed``. At most ``max_tokens`` are generated (fewer when the
    conversation would not fit ``context_length``). After each token, ``progress`` gets the
    count and the text so far and ``check_cancelled`` is called: either may raise to stop.
    The model's generation config (repetition penalty, end tokens) applies; its sampling
    settings are replaced by ``temperature`` alone. ``compile_decoding`` (CUDA): the key/value
    cache is static (its length rounded up to a multiple of CACHE_BUCKET, so that a few
    lengths serve every request) and transformers compiles the decoding step for it.
    """
    conversation, videos = _conversation(messages)
    image_size = processor.image_processor.size
    inputs = processor.apply_chat_template(
        conversation,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        # text can't write <|im_start|>, <|image_pad|>...: they are encoded as plain text
        sanitize_control_tokens=True,
        processor_kwargs={
            "images_kwargs": {
                "size": {
                    "shortest_edge": image_size.shortest_edge,
                    "longest_edge": min(image_size.longest_edge, IMAGE_MAX_PIXELS),
                }
            },
            "videos_kwargs": {
                "size": {"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS},
                "cap_pixels_per_frame": True,
                "do_sample_frames": False,  # sampled already, at the rate in the metadata
                "video_metadata": videos or None,
            },
        },
    ).to(model.device)
    prompt_tokens = inputs["input_ids"].shape[1]
    if context_length is not None:
        room = context_length - prompt_tokens
        if room < 1:
            raise JobFailure(
                f"the conversation is {prompt_tokens} tokens (images and video included); the "
                f"model reads at most {context_length}. Send fewer or smaller images, shorter "
                "videos or fewer messages",
                type="context_too_long",
            )
        max_tokens = min(max_tokens, room)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)

    streamer = _TokenStreamer(processor.tokenizer, max_tokens, progress, check_cancelled)
    next_token = _NextToken(len(processor.tokenizer), temperature, seed, model.device)
    if check_cancelled is not None:
        check_cancelled()
    cache: dict[str, Any] = {}
    if compile_decoding:
        from transformers import StaticCache

        allow_compiled_graphs()  # a graph per cache length: more than Dynamo's default 8
        length = -(-(prompt_tokens + max_tokens) // CACHE_BUCKET) * CACHE_BUCKET
        cache["past_key_values"] = StaticCache(config=model.config, max_cache_len=length)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            **cache,
            max_new_tokens=max_tokens,
            # greedy over what _NextToken leaves: the argmax, or the one token it sampled
            do_sample=False,
            logits_processor=LogitsProcessorList([next_token]),
            streamer=streamer,
        )
    generated = output[0, prompt_tokens:].tolist()
    response = processor.tokenizer.decode(generated, skip_special_tokens=True)
    return response, Usage(prompt_tokens=prompt_tokens, completion_tokens=len(generated))


def _conversation(
    messages: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages as the processor's chat template takes them, and each video's metadata."""
    conversation: list[dict[str, Any]] = []
    videos: list[dict[str, Any]] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            conversation.append({"role": message["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image":
                image = part["image"]
                _check_aspect_ratio("an image", *image.size)
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                parts.append({"type": "image", "image": rgb})
            elif part["type"] == "video":
                frames = _frames_array(part["frames"])
                _check_aspect_ratio("a video", frames.shape[2], frames.shape[1])
                parts.append({"type": "video", "video": frames})
                # frames_indices: every frame given is used; sampled_fps is then ``fps``
                count = len(frames)
                videos.append(
                    {
                        "total_num_frames": count,
                        "fps": part["fps"],
                        "frames_indices": list(range(count)),
                    }
                )
            else:
                raise ValueError(f"unknown content part type {part['type']!r}")
        conversation.append({"role": message["role"], "content": parts})
    return conversation, videos


def _check_aspect_ratio(what: str, width: int, height: int) -> None:
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise JobFailure(
            f"{what} of {width}x{height} is too narrow: {MAX_ASPECT_RATIO}:1 at most",
            type="invalid_input",
        )


def _frames_array(frames: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    if isinstance(frames, np.ndarray):
        return frames
    return np.stack([np.asarray(f if f.mode == "RGB" else f.convert("RGB")) for f in frames])


class _NextToken(LogitsProcessor):
    """Leaves generate's greedy step one choice: ids the tokenizer doesn't have (the padding of
    the embedding matrix) are masked; at a temperature above 0 one token is drawn from the
    softmax with this request's own generator and everything else is masked."""

    def __init__(self, known_tokens: int, temperature: float, seed: int, device: Any) -> None:
        self.known_tokens = known_tokens
        self.temperature = temperature
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = scores.clone()
        masked[:, self.known_tokens :] = -float("inf")
        if self.temperature == 0:
            return cast(torch.FloatTensor, masked)
        probabilities = torch.softmax(masked.float() / self.temperature, dim=-1)
        chosen = torch.multinomial(probabilities, 1, generator=self.generator)
        only = torch.full_like(masked, -float("inf"))
        return cast(torch.FloatTensor, only.scatter_(1, chosen, 0.0))


class _TokenStreamer(BaseStreamer):
    """generate's per-token hook: reports the text so far, checks for cancellation."""

    def __init__(
        self,
        tokenizer: Any,
        max_tokens: int,
        progress: Progress | None,
        check_cancelled: Callable[[], None] | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.progress = progress
        self.check_cancelled = check_cancelled
        self.prompt_seen = False
        self.tokens: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        if self.progress is not None:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            # a character whose bytes are not all generated yet decodes as U+FFFD: hold it back
            self.progress(len(self.tokens), self.max_tokens, text.rstrip("\ufffd"))
        if self.check_cancelled is not None:
            self.check_cancelled()

    def end(self) -> None:
        pass


def sample_video_frames(
    path: str | Path, fps: float, max_frames: int, max_pixels: int = VIDEO_MAX_PIXELS
) -> VideoClip:
    """Frames of the video file at ``path`` (mp4, mov, ... whatever FFmpeg reads), ``fps`` a
    second from its start, or ``max_frames`` spread evenly over a longer video, each scaled
    down to at most ``max_pixels`` (the model sees no more). Raises ``JobFailure`` when the
    file can't be read as a video."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise JobFailure(f"can't read the video {path}: {exc}", type="invalid_input") from exc
    with container:
        if not container.streams.video:
            raise JobFailure(f"{path} has no video stream", type="invalid_input")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        if duration is None:
            raise JobFailure(f"can't tell the length of the video {path}", type="invalid_input")
        count = max(1, min(max_frames, round(duration * fps)))
        if stream.frames:
            count = min(count, stream.frames)
        starts = [duration * i / count for i in range(count)]
        frames: list[Image.Image] = []
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                # the first frame at or after each start (1 ms of slack for rounded timestamps)
                while len(frames) < count and frame.time >= starts[len(frames)] - 1e-3:
                    frames.append(_scaled(frame, max_pixels))
                if len(frames) == count:
                    break
        except av.FFmpegError as exc:
            if not frames:
                raise JobFailure(
                    f"can't decode the video {path}: {exc}", type="invalid_input"
                ) from exc
    if not frames:
        raise JobFailure(f"the video {path} has no frames", type="invalid_input")
    # (a stream shorter than its header said gives fewer frames, still this far apart)
    return VideoClip(frames, fps=count / duration)


def _duration(container: Any, stream: Any) -> float | None:
    """Seconds of the stream, from its header or the container's."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        import av

        return container.duration / av.time_base
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    return None


def _scaled(frame: Any, max_pixels: int) -> Image.Image:
    width, height = frame.width, frame.height
    if width * height <= max_pixels:
        return frame.to_image()
    scale = (max_pixels / (width * height)) ** 0.5
    return frame.to_image(width=max(1, int(width * scale)), height=max(1, int(height * scale)))
