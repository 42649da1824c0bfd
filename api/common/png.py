"""A fast PNG encoder for 8- and 16-bit images: rows Sub-filtered with numpy, then deflated in
parallel strips (zlib releases the GIL) joined into one zlib stream, the way pigz does.

PIL's encoder compresses on one core: ~100 ms for a 1024² RGB image, a sizeable share
of a GPU request. The result is an ordinary PNG (any reader decodes the same pixels);
its bytes depend only on the image and the text, not on the number of cores.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}
ROWS_PER_STRIP = 64
LEVEL = 1

_pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_chunk(key: str, value: str) -> bytes:
    """tEXt where Latin-1 can hold it, else iTXt (UTF-8), as PIL does."""
    keyword = key.encode("latin-1", "replace")[:79]
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


def _sub_filtered(pixels: np.ndarray) -> np.ndarray:
    """Each row as PNG filter type 1 (Sub): a leading 1, then byte - byte to its left."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 1
    filtered[:, 1 : 1 + channels] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, 1 + channels :])
    return filtered


def _deflate(data: memoryview, last: bool) -> bytes:
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(
        zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    )


def encode_png(image: Image.Image, text: dict[str, str]) -> bytes:
    """PNG bytes of an L, RGB or RGBA image, with ``text`` as text chunks."""
    return encode_png_pixels(np.asarray(image), text)


def encode_png_pixels(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    """PNG bytes of HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) pixels, uint8 or uint16 (16
    bits a sample, big-endian as PNG stores them), with ``text`` as text chunks."""
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    depth = 8 * pixels.dtype.itemsize
    if depth == 16:  # the filter works on bytes: each sample's two bytes, high first
        pixels = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8)
        pixels = pixels.reshape(height, width, channels * 2)
    elif depth != 8:
        raise ValueError(f"PNG samples are 8 or 16 bits, not {pixels.dtype}")
    filtered = _sub_filtered(pixels)
    raw = filtered.reshape(-1).data
    stride = filtered.shape[1] * ROWS_PER_STRIP
    starts = range(0, len(raw), stride)
    strips = list(
        _pool.map(lambda s: _deflate(raw[s : s + stride], s + stride >= len(raw)), starts)
    )
    stream = b"\x78\x01" + b"".join(strips) + struct.pack(">I", zlib.adler32(raw))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", header),
            *(_text_chunk(key, value) for key, value in text.items()),
            _chunk(b"IDAT", stream),
            _chunk(b"IEND", b""),
        ]
    )
