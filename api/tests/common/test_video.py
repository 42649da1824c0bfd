"""mp4 in and out (api.common.video): H.264 yuv420p, frame rate, size and metadata kept."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from api.common.video import decode_mp4, encode_mp4, probe_mp4, tag_mp4


def _frames(count: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth colour ramps that move from frame to frame, like generated footage."""
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    return (
        np.stack(
            [
                np.stack([x * 255 + 0 * y, y * 255 + 0 * x, (x + y) * 100 + t * 8], axis=-1)
                for t in range(count)
            ]
        )
        .clip(0, 255)
        .astype(np.uint8)
    )


def test_round_trip(tmp_path: Path) -> None:
    frames = _frames()
    metadata = {"model": "ltx-video", "prompt": "a lighthouse at dusk", "seed": 7, "tiny": True}
    data = encode_mp4(frames, 24, metadata)

    info = probe_mp4(data)
    assert (info.frames, info.fps, info.width, info.height) == (6, 24.0, 64, 48)
    assert info.metadata == metadata
    path = tmp_path / "take.mp4"
    path.write_bytes(data)
    assert probe_mp4(path) == info

    decoded = decode_mp4(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - frames.astype(int))
    assert error.mean() < 3  # yuv420p: colour at half resolution, 8-bit limited range
    assert np.array_equal(decode_mp4(data), decoded)


def test_the_file_is_h264_yuv420p_rec709_with_its_index_first() -> None:
    data = encode_mp4(_frames(), 16, {"prompt": "a lighthouse at dusk"})
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")
    with av.open(io.BytesIO(data)) as container:
        codec = container.streams.video[0].codec_context
        assert (codec.name, codec.pix_fmt) == ("h264", "yuv420p")
        assert (codec.colorspace, codec.color_primaries, codec.color_trc) == (1, 1, 1)
        assert container.metadata["title"] == "a lighthouse at dusk"


def test_same_frames_give_the_same_bytes() -> None:
    frames = _frames()
    assert encode_mp4(frames, 24, {"seed": 1}) == encode_mp4(frames, 24, {"seed": 1})


@pytest.mark.parametrize("fps", [7, 16, 23.976, 29.97, 12.5])
def test_frame_rates_are_kept(fps: float) -> None:
    info = probe_mp4(encode_mp4(_frames(3), fps, {}))
    assert info.fps == pytest.approx(fps, abs=1e-6)
    assert info.metadata == {}


def test_odd_sizes_are_padded_to_even_by_repeating_the_edge() -> None:
    frames = _frames(height=47, width=63)
    data = encode_mp4(frames, 24, {})
    info = probe_mp4(data)
    assert (info.width, info.height) == (64, 48)
    decoded = decode_mp4(data)
    assert decoded.shape == (6, 48, 64, 3)
    assert np.abs(decoded[:, :47, :63].astype(int) - frames.astype(int)).mean() < 3
    # the added column and row repeat the last ones of the frames
    assert np.abs(decoded[:, :47, 63].astype(int) - frames[:, :, 62].astype(int)).mean() < 3
    assert np.abs(decoded[:, 47, :63].astype(int) - frames[:, 46].astype(int)).mean() < 3


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((2, 8, 8, 4), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
    ],
)
def test_anything_but_uint8_rgb_frames_is_refused(frames: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected uint8 RGB frames"):
        encode_mp4(frames, 24, {})


def test_other_mp4s_probe_without_metadata() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.metadata["comment"] = "shot on a phone"
        for pixels in _frames(2, 32, 32):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    info = probe_mp4(buffer.getvalue())
    assert (info.frames, info.fps, info.width, info.height, info.metadata) == (2, 10.0, 32, 32, {})


def test_a_providers_mp4_is_tagged_without_re_encoding():
    frames = np.random.default_rng(3).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    made_elsewhere = encode_mp4(frames, 24, {})
    tagged = tag_mp4(made_elsewhere, {"model": "runway-gen4-turbo", "prompt": "sea"})
    info = probe_mp4(tagged)
    assert info.metadata == {"model": "runway-gen4-turbo", "prompt": "sea"}
    assert (info.frames, info.fps, info.width, info.height) == (4, 24.0, 48, 32)
    assert np.array_equal(decode_mp4(tagged), decode_mp4(made_elsewhere))  # same stream
