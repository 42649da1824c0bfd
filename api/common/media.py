"""Reading input images and encoding outputs (PNG, TIFF and EXR with generation metadata;
8- and 16-bit, half and full float)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from api.common.errors import InvalidField
from api.common.png import COLOUR_TYPES, encode_png, encode_png_pixels

IMAGE_OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_KEY = "deferred-diffusion"
# What an output is served as (not guessed from the system's tables: .exr varies).
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".exr": "image/x-exr",
    ".mp4": "video/mp4",
}


def limit_input_pixels(max_pixels: int) -> None:
    """Refuse input images of more than ``max_pixels`` (DD_MAX_INPUT_PIXELS) from their
    header, before decoding. PIL's own guard takes the same number: it warns above it (we
    have refused by then: the warning is noise) and refuses, anywhere, images of twice it."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _too_large(field: str, what: str, size: str) -> InvalidField:
    return InvalidField(
        f"{field}{what} is too large: {size}, over DD_MAX_INPUT_PIXELS "
        f"({Image.MAX_IMAGE_PIXELS} pixels); refused before decoding. Send a smaller image "
        "(or raise DD_MAX_INPUT_PIXELS on the server)",
        field,
    )


def _bomb(field: str, what: str) -> InvalidField:
    """An image PIL refused itself, being over twice the limit (it refuses only under one)."""
    assert Image.MAX_IMAGE_PIXELS is not None
    return _too_large(field, what, f"over {2 * Image.MAX_IMAGE_PIXELS} pixels")


def _check_pixels(width: int, height: int, field: str, what: str) -> None:
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        raise _too_large(field, what, f"{width}x{height} = {width * height} pixels")


def _open_pil(source: Path | io.BytesIO, field: str, what: str) -> Image.Image:
    """``Image.open`` (which reads the header only), refused when the size is too large."""
    try:
        image = Image.open(source)
    except Image.DecompressionBombError:
        raise _bomb(field, what) from None
    try:
        _check_pixels(*image.size, field, what)
    except InvalidField:
        image.close()
        raise
    return image


def open_image(path: Path, field: str) -> Image.Image:
    """Decode an input image (PNG, JPEG, WebP, TIFF, EXR) or fail naming ``field``."""
    what = f" {str(path)!r}"
    if path.suffix.lower() == ".exr":
        _check_exr_header(str(path), field, what)  # before reading the file into memory
        return _open_exr(path.read_bytes(), field)
    try:
        with _open_pil(path, field, what) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidField(f"{field} {str(path)!r} is not a readable image: {exc}", field) from None


def check_image_file(path: Path, field: str) -> tuple[int, int]:
    """Fail naming ``field`` unless ``path`` is an image this server can read and its
    header's size is within DD_MAX_INPUT_PIXELS (checked without decoding it); its size."""
    what = f" {str(path)!r}"
    if path.suffix.lower() == ".exr":
        return _check_exr_header(str(path), field, what)
    try:
        with _open_pil(path, field, what) as image:
            image.verify()
            return image.size
    except InvalidField:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise InvalidField(f"{field} {str(path)!r} is not a readable image: {exc}", field) from None


def _check_exr_header(source: str | io.BytesIO, field: str, what: str) -> tuple[int, int]:
    """An OpenEXR file's header (read alone, no pixels): readable, and every part's data
    window within DD_MAX_INPUT_PIXELS in all. The size of its first part (the one read)."""
    import OpenEXR

    try:
        parts = OpenEXR.File(source, header_only=True).parts
    except Exception as exc:  # the binding raises plain exceptions for bad files
        raise InvalidField(f"{field} is not a readable OpenEXR image: {exc}", field) from None
    if not parts or not all(part.header.get("channels") for part in parts):
        raise InvalidField(f"{field}: the OpenEXR image has no channels", field)
    sizes = []
    for part in parts:
        (x_min, y_min), (x_max, y_max) = part.header["dataWindow"]
        sizes.append((int(x_max) - int(x_min) + 1, int(y_max) - int(y_min) + 1))
    pixels = sum(width * height for width, height in sizes)
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        shown = " + ".join(f"{width}x{height}" for width, height in sizes)
        raise _too_large(field, what, f"{shown} = {pixels} pixels")
    return sizes[0]


def _open_exr(data: bytes, field: str) -> Image.Image:
    """An OpenEXR plate (scene-linear float) as the 8-bit sRGB picture the models take:
    RGB(A) or a single channel (Y, or the first), the sRGB transfer curve, clipped to 0-1."""
    import numpy as np
    import OpenEXR

    _check_exr_header(io.BytesIO(data), field, "")  # its size, before decoding a pixel
    try:
        channels = OpenEXR.File(io.BytesIO(data)).channels()
    except Exception as exc:  # the binding raises plain exceptions for bad files
        raise InvalidField(f"{field} is not a readable OpenEXR image: {exc}", field) from None
    name = next((n for n in ("RGBA", "RGB", "Y") if n in channels), next(iter(channels), None))
    if name is None:
        raise InvalidField(f"{field}: the OpenEXR image has no channels", field)
    pixels = np.asarray(channels[name].pixels, dtype=np.float32)
    pixels = pixels[..., :3] if pixels.ndim == 3 else pixels
    linear = np.clip(np.nan_to_num(pixels), 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return Image.fromarray(np.round(srgb * 255).astype(np.uint8))


# The formats an input image is saved as (an upload, a data URL), by what its bytes are:
# PIL's format name → suffix. The name never comes from the client's file name or MIME type.
IMAGE_FORMAT_SUFFIXES = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "MPO": ".jpg",  # a JPEG with extra frames (some cameras): PIL names it apart
    "WEBP": ".webp",
    "TIFF": ".tif",
}
_OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
EXR_MAGIC = b"\x76\x2f\x31\x01"
_DATA_URL_HEADER = re.compile(r"data:image/[A-Za-z0-9][A-Za-z0-9.+-]*(;[A-Za-z0-9=._+-]+)*;base64")


def image_suffix(source: bytes | BinaryIO, field: str) -> str:
    """The suffix for an input image's real format (from its first bytes), or a 4xx naming
    ``field`` for anything but PNG, JPEG, WebP, TIFF and OpenEXR."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    start = stream.tell()
    try:
        if stream.read(len(EXR_MAGIC)) == EXR_MAGIC:
            return ".exr"
        stream.seek(start)
        with Image.open(stream, formats=_OPEN_FORMATS) as image:
            assert image.format is not None  # the format that opened it, one of _OPEN_FORMATS
            return IMAGE_FORMAT_SUFFIXES[image.format]
    except Image.DecompressionBombError:
        raise _bomb(field, "") from None
    except Exception:  # PIL raises many types for what it can't read
        raise InvalidField(
            f"{field} is not a PNG, JPEG, WebP, TIFF or OpenEXR image", field
        ) from None
    finally:
        stream.seek(start)


def decode_data_url(value: str, field: str) -> tuple[bytes, str]:
    """``data:image/png;base64,...`` → (bytes, suffix of the decoded image's real format), or
    a 4xx naming ``field``. The MIME type is not trusted: the bytes say what the image is."""
    header, _, payload = value.partition(",")
    if not _DATA_URL_HEADER.fullmatch(header):
        raise InvalidField(
            f"{field}: only base64 image data URLs are accepted (data:image/<type>;base64,...)",
            field,
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField(f"{field}: the data URL is not valid base64", field) from None
    return data, image_suffix(data, field)


def decode_image_bytes(data: bytes, field: str) -> Image.Image:
    if data.startswith(EXR_MAGIC):
        return _open_exr(data, field)
    with _open_pil(io.BytesIO(data), field, "") as image:
        image.load()
        return image.copy()


def check_image_bytes(data: bytes, field: str) -> tuple[int, int]:
    """Like ``check_image_file``, for an image in memory (a data: URL's)."""
    if data.startswith(EXR_MAGIC):
        return _check_exr_header(io.BytesIO(data), field, "")
    try:
        with _open_pil(io.BytesIO(data), field, "") as image:
            image.verify()
            return image.size
    except InvalidField:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise InvalidField(f"{field} is not a readable image: {exc}", field) from None


def read_metadata(source: Path | bytes, field: str) -> dict[str, Any]:
    """The metadata this server wrote into an output (a PNG's text, an EXR's header, a
    TIFF's, JPEG's or WebP's description), read without decoding the pixels; a 4xx naming
    ``field`` when there is none."""
    text: Any = None
    try:
        file: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with file:
            magic = file.read(len(EXR_MAGIC))
            file.seek(0)
            if magic == EXR_MAGIC:
                import OpenEXR

                text = OpenEXR.File(file, header_only=True).header().get(METADATA_KEY)
            else:
                with Image.open(file, formats=_OPEN_FORMATS) as image:
                    if image.format == "PNG":
                        text = image.info.get(METADATA_KEY)  # chunks before the pixels
                    else:  # TIFF, JPEG, WebP: ImageDescription
                        text = image.getexif().get(0x010E)
    except Image.DecompressionBombError:
        raise _bomb(field, "") from None
    except Exception as exc:  # PIL and OpenEXR raise many types for what they can't read
        raise InvalidField(f"{field} is not a readable image: {exc}", field) from None
    try:
        metadata = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise InvalidField(
            f"{field} carries no {METADATA_KEY} metadata: it was not written by this server "
            "(or its metadata was stripped)",
            field,
        )
    return metadata


# A JPEG's EXIF segment holds at most 64 KiB: room for the metadata's JSON.
JPEG_DESCRIPTION_CHARS = 60_000


def _shortened(value: Any, chars: int) -> Any:
    if isinstance(value, str) and len(value) > chars:
        return f"{value[:chars]}... [{len(value) - chars} more characters]"
    if isinstance(value, dict):
        return {key: _shortened(item, chars) for key, item in value.items()}
    if isinstance(value, list):
        return [_shortened(item, chars) for item in value]
    return value


def _jpeg_description(metadata: dict[str, Any]) -> str:
    """The metadata's JSON for a JPEG: when it is too long for the EXIF segment (long
    prompts, many inputs), its longest texts are shortened until it fits, and
    ``metadata_shortened`` says so."""
    text = json.dumps(metadata, sort_keys=True)
    for chars in (4096, 1024, 256, 64):
        if len(text) <= JPEG_DESCRIPTION_CHARS:
            break
        shortened = _shortened(metadata, chars) | {"metadata_shortened": True}
        text = json.dumps(shortened, sort_keys=True)
    return text


def _png_text(metadata: dict[str, Any]) -> dict[str, str]:
    """A PNG's text chunks: each metadata item (JSON for non-strings), and the whole of it
    under METADATA_KEY. JSON keeps non-ASCII text as UTF-8 (iTXt): escaped, a long prompt of
    emoji would take three times the bytes."""
    text = {
        key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in metadata.items()
        if value is not None
    }
    text[METADATA_KEY] = json.dumps(metadata, sort_keys=True, ensure_ascii=False)
    return text


def _tiff(pixels: Any, metadata: dict[str, Any]) -> bytes:
    """An 8- or 16-bit RGB (or grey) TIFF, deflated, the metadata's JSON as its
    ImageDescription (an ASCII tag: non-ASCII text escaped)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        pixels,
        photometric="rgb" if pixels.ndim == 3 else "minisblack",
        compression="zlib",
        description=json.dumps(metadata, sort_keys=True),
        software=metadata.get("software"),
        metadata=None,
    )
    return buffer.getvalue()


def encode_image(image: Image.Image, suffix: str, metadata: dict[str, Any]) -> bytes:
    """Encode ``image`` for ``suffix``; PNGs carry every metadata item as a text chunk."""
    buffer = io.BytesIO()
    suffix = suffix.lower()
    if suffix == ".png":
        text = _png_text(metadata)
        if image.mode in COLOUR_TYPES:
            return encode_png(image, text)
        info = PngImagePlugin.PngInfo()  # other modes (16-bit grey...): PIL's encoder
        for key, value in text.items():
            info.add_text(key, value)
        image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    elif suffix in (".jpg", ".jpeg"):
        exif = Image.Exif()
        exif[0x010E] = _jpeg_description(metadata)  # ImageDescription
        image.convert("RGB").save(buffer, format="JPEG", quality=95, exif=exif)
    elif suffix == ".webp":
        exif = Image.Exif()
        exif[0x010E] = json.dumps(metadata, sort_keys=True)
        image.save(buffer, format="WEBP", quality=95, exif=exif)
    elif suffix in (".tif", ".tiff"):
        import numpy as np

        return _tiff(np.asarray(image.convert("RGB")), metadata)
    else:
        raise ValueError(f"unsupported image suffix {suffix}")
    return buffer.getvalue()


def encode_image_16(srgb: Any, suffix: str, metadata: dict[str, Any]) -> bytes:
    """A float HxWx3 sRGB image in 0..1 as a 16-bit PNG or TIFF (each value rounded to the
    nearest of 65536 levels: no 8-bit step on the way)."""
    import numpy as np

    pixels = (np.clip(srgb, 0, 1) * 65535).round().astype(np.uint16)
    suffix = suffix.lower()
    if suffix == ".png":
        return encode_png_pixels(pixels, _png_text(metadata))
    if suffix in (".tif", ".tiff"):
        return _tiff(pixels, metadata)
    raise ValueError(f"no 16-bit {suffix} output")


def srgb_to_linear(srgb: Any) -> Any:
    """sRGB-encoded values (0..1) decoded to linear light (IEC 61966-2-1's curve)."""
    import numpy as np

    values = np.clip(np.asarray(srgb, dtype=np.float32), 0, 1)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4).astype(
        np.float32
    )


# Header attributes that OpenEXR defines itself: metadata never goes over them.
_EXR_STANDARD_ATTRIBUTES = frozenset(
    "channels chunkCount compression dataWindow displayWindow lineOrder name pixelAspectRatio "
    "screenWindowCenter screenWindowWidth tiles type version".split()
)


def _exr(channels: dict[str, Any], metadata: dict[str, Any]) -> bytes:
    """An OpenEXR of ``channels``, ZIP-compressed. Every metadata item is a string attribute
    of the header (JSON for non-strings), and the whole of it is in the
    ``deferred-diffusion`` attribute, as in PNG outputs."""
    import OpenEXR

    header: dict[str, Any] = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    for key, value in metadata.items():
        if value is not None and key not in _EXR_STANDARD_ATTRIBUTES:
            header[key] = value if isinstance(value, str) else json.dumps(value)
    header[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
    buffer = io.BytesIO()
    OpenEXR.File(header, channels).write(buffer)
    return buffer.getvalue()


def encode_exr(array: Any, metadata: dict[str, Any]) -> bytes:
    """A float32 HxW array as a one-channel ("Y") OpenEXR, full float (depth)."""
    import numpy as np

    pixels = np.ascontiguousarray(array, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"EXR output needs an HxW array, got shape {pixels.shape}")
    return _exr({"Y": pixels}, metadata)


def encode_linear_exr(srgb: Any, metadata: dict[str, Any]) -> bytes:
    """A float HxWx3 sRGB image (0..1) as a half-float scene-linear RGB OpenEXR (channels
    R, G, B), what a compositor reads without a colour transform."""
    import numpy as np

    pixels = np.ascontiguousarray(srgb_to_linear(srgb).astype(np.float16))
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"an RGB EXR needs an HxWx3 array, got shape {pixels.shape}")
    return _exr({"RGB": pixels}, metadata)
