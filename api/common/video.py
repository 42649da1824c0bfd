"""mp4 in and out with PyAV (FFmpeg's libraries in the wheel; no ffmpeg install needed).

Videos are written as H.264 in yuv420p, the format every player, ffmpeg, Nuke and Houdini
read, tagged Rec. 709 (limited range), with the moov atom first (``+faststart``) so a browser
plays the file while it downloads. The generation record goes in the container's ``comment``
tag as JSON (``title``: the prompt, if the record has one), where ffprobe and players show it.
"""

from __future__ import annotations

import io
import json
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np

from api.common.errors import InvalidField

# x264's constant rate factor: 17 is visually lossless for generated footage; lower is larger.
CRF = 17
_REC709 = 1  # the ITU-T H.273 code of BT.709 primaries, transfer and matrix


class VideoInfo(NamedTuple):
    frames: int
    fps: float
    width: int
    height: int
    metadata: dict[str, Any]  # the record encode_mp4 was given ({} for other files)


def encode_mp4(frames: np.ndarray, fps: float, metadata: dict[str, Any]) -> bytes:
    """An H.264 yuv420p mp4 of ``frames`` (uint8 RGB, (frames, height, width, 3)) at ``fps``,
    with ``metadata`` as JSON in its comment tag.

    yuv420p stores colour at half resolution, so width and height must be even: an odd one is
    padded by repeating the last column or row (the mp4 is then 1 px wider or taller than the
    frames; probe_mp4 reports the size written).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or not len(frames):
        raise ValueError(
            f"expected uint8 RGB frames (n, h, w, 3), got {frames.dtype} {frames.shape}"
        )
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with tempfile.TemporaryDirectory(prefix="dd-mp4-") as folder:
        # faststart rewrites the file to move the index first: it needs a real file
        path = Path(folder, "video.mp4")
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            _tag(out, metadata)
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(CRF), "preset": "medium"}
            codec = stream.codec_context
            codec.colorspace = codec.color_primaries = codec.color_trc = _REC709
            codec.color_range = av.video.reformatter.ColorRange.MPEG
            for pixels in frames:
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
                    format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG"
                )
                out.mux(stream.encode(frame))
            out.mux(stream.encode())  # flush the encoder's delayed frames
        return path.read_bytes()


def tag_mp4(data: bytes, metadata: dict[str, Any]) -> bytes:
    """An mp4 made elsewhere (a provider's) with ``metadata`` in its tags as ``encode_mp4``
    writes them: its streams copied as they are (no re-encoding), the moov atom first."""
    with tempfile.TemporaryDirectory(prefix="dd-mp4-") as folder:
        path = Path(folder, "video.mp4")
        with (
            _open(data) as source,
            av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out,
        ):
            _tag(out, metadata)
            copies = {
                stream.index: out.add_stream_from_template(stream)
                for stream in source.streams
                if stream.type in ("video", "audio")
            }
            for packet in source.demux(*(source.streams[index] for index in copies)):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
        return path.read_bytes()


def _tag(out: av.container.OutputContainer, metadata: dict[str, Any]) -> None:
    out.metadata["comment"] = json.dumps(metadata, sort_keys=True)
    prompt = metadata.get("prompt")
    if isinstance(prompt, str) and prompt:
        out.metadata["title"] = prompt


def check_video_file(path: Path, field: str) -> None:
    """Fail naming ``field`` unless ``path`` is a video FFmpeg reads (from its headers)."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise InvalidField(f"{field} {str(path)!r} has no video stream", field)
            stream = container.streams.video[0]
            if not (stream.duration or container.duration):  # a still image, say
                raise InvalidField(f"{field} {str(path)!r} is not a video (no duration)", field)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InvalidField(f"{field} {str(path)!r} is not a readable video: {exc}", field) from None


def _open(source: bytes | Path) -> av.container.InputContainer:
    if isinstance(source, bytes):
        return av.open(io.BytesIO(source), mode="r")
    return av.open(str(source), mode="r")


def probe_mp4(source: bytes | Path) -> VideoInfo:
    """Frame count, frame rate, size and the generation record of an mp4 (bytes or a path),
    from its headers."""
    with _open(source) as container:
        stream = container.streams.video[0]
        if stream.average_rate is None:
            raise ValueError("the mp4's video stream has no frame rate")
        try:
            metadata = json.loads(container.metadata.get("comment", "{}"))
        except json.JSONDecodeError:
            metadata = {}
        return VideoInfo(
            frames=stream.frames,
            fps=float(stream.average_rate),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            metadata=metadata if isinstance(metadata, dict) else {},
        )


def decode_mp4(source: bytes | Path) -> np.ndarray:
    """Every frame of an mp4 (bytes or a path) as uint8 RGB, (frames, height, width, 3),
    converted with the colour matrix and range the file is tagged with."""
    with _open(source) as container:
        stream = container.streams.video[0]
        return np.stack(
            [
                frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
                for frame in container.decode(stream)
            ]
        )
