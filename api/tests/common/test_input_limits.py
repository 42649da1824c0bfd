"""Inputs too large to take: images whose header claims more than DD_MAX_INPUT_PIXELS
(refused from the header, before decoding), and request bodies over their route's limit
(refused as the bytes arrive)."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.types import Message

import api.common.router
from api.common.http import MAX_JSON_BYTES
from api.main import create_app
from api.tests.conftest import assert_nothing_happened, files_under, image_request


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A grey PNG of width x height: black (zeros deflate ~1000:1, so 13000x13000 is a
    ~160 KB file that decodes to 169 MB), or ``pixels`` as its (broken) image data."""
    if pixels is None:
        compressor = zlib.compressobj(9)
        row = bytes(width + 1)  # filter byte + pixels
        pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", pixels),
            _png_chunk(b"IEND", b""),
        ]
    )


def exr_claiming(width: int, height: int, broken: bool = False) -> bytes:
    """A scanline EXR of width x height half-float zeros (ZIP: one chunk per 16 lines), made
    by repeating one compressed chunk: 16000x16000 is ~0.7 MB on disk, 512 MB decoded. With
    ``broken``, the chunks are garbage: only the header is sound."""
    buffer = io.BytesIO()
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Y": np.zeros((16, width), np.float16)}).write(buffer)
    data = buffer.getvalue()
    # The file: header, offset table (one uint64 per chunk), chunks (y, size, bytes).
    start = next(p for p in range(len(data)) if struct.unpack_from("<Q", data, p)[0] == p + 8)
    head, payload = data[:start], data[start + 16 :]
    if broken:
        payload = b"\xff" * len(payload)
    for name in (b"dataWindow", b"displayWindow"):
        at = head.index(name + b"\0box2i\0") + len(name) + 11  # past name, type and size
        head = head[:at] + struct.pack("<4i", 0, 0, width - 1, height - 1) + head[at + 16 :]
    chunks = [struct.pack("<ii", y, len(payload)) + payload for y in range(0, height, 16)]
    offsets, position = [], len(head) + 8 * len(chunks)
    for chunk in chunks:
        offsets.append(position)
        position += len(chunk)
    return head + struct.pack(f"<{len(chunks)}Q", *offsets) + b"".join(chunks)


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return png_claiming(13000, 13000)


@pytest.fixture(scope="module")
def exr_bomb() -> bytes:
    return exr_claiming(16000, 16000)


def test_the_bombs_are_real_images(png_bomb: bytes, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's guard off: we look at it
    assert len(png_bomb) < 200_000
    with Image.open(io.BytesIO(png_bomb)) as image:  # header only: no decoding here
        assert image.size == (13000, 13000)
    small = png_claiming(300, 200)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (300, 200) and not np.asarray(image).any()
    # The EXR construction decodes as the image it claims to be (shown on a short one).
    path = tmp_path / "short.exr"
    path.write_bytes(exr_claiming(16000, 48))
    pixels = OpenEXR.File(str(path), separate_channels=True).channels()["Y"].pixels
    assert pixels.shape == (48, 16000) and not pixels.any()


@pytest.mark.parametrize("kind", ["png", "exr"])
def test_upload_refused_from_the_header(
    client: TestClient, tmp_path: Path, png_bomb: bytes, exr_bomb: bytes, kind: str
):
    before = files_under(tmp_path)
    data = png_bomb if kind == "png" else exr_bomb
    response = client.post("/api/files", files={"file": (f"bomb.{kind}", data)})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "file" and "DD_MAX_INPUT_PIXELS" in error["message"]
    assert "refused before decoding" in error["message"]
    if kind == "exr":
        assert "16000x16000 = 256000000 pixels" in error["message"]
    assert_nothing_happened(client, tmp_path, before)


@pytest.mark.parametrize("field", ["input_image_path", "data URL", "controlnets.0.image_path"])
def test_submit_refused_from_the_header(
    client: TestClient, workspace: Path, tmp_path: Path, png_bomb: bytes, field: str
):
    path = workspace / "bomb.png"
    path.write_bytes(png_bomb)
    body = image_request(workspace, "image_to_image", model="sd1.5")
    if field == "data URL":
        body["input_image_path"] = "data:image/png;base64," + base64.b64encode(png_bomb).decode()
        field = "input_image_path"
    elif field == "input_image_path":
        body["input_image_path"] = str(path)
    else:
        body["controlnets"] = [{"model": "depth", "image_path": str(path)}]
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and "DD_MAX_INPUT_PIXELS" in error["message"]
    assert_nothing_happened(client, tmp_path, before)


def test_exr_input_refused_from_the_header(
    client: TestClient, workspace: Path, tmp_path: Path, exr_bomb: bytes
):
    path = workspace / "bomb.exr"
    path.write_bytes(exr_bomb)
    body = image_request(workspace, "image_to_image", model="sd1.5", input_image_path=str(path))
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "input_image_path"
    assert "16000x16000 = 256000000 pixels" in error["message"]
    assert_nothing_happened(client, tmp_path, before)


@pytest.mark.parametrize("kind", ["png", "exr"])
def test_only_the_header_is_read(client: TestClient, workspace: Path, tmp_path: Path, kind: str):
    """Pixel data that can't be decoded at all, under a header claiming 9000x9000: the
    answer is the size, so the pixels were never looked at."""
    path = workspace / f"broken.{kind}"
    if kind == "png":
        path.write_bytes(png_claiming(9000, 9000, pixels=b"not deflate data"))
    else:
        path.write_bytes(exr_claiming(9008, 9008, broken=True))
    body = image_request(workspace, "image_to_image", model="sd1.5", input_image_path=str(path))
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == 422, response.text
    side = 9000 if kind == "png" else 9008
    assert f"{side}x{side} = {side * side} pixels" in response.json()["error"]["message"]
    assert_nothing_happened(client, tmp_path, before)


def test_the_limit_is_a_setting(make_client, workspace: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    client = make_client(max_input_pixels=64 * 64)
    assert Image.MAX_IMAGE_PIXELS == 64 * 64  # PIL's own guard follows it
    body = image_request(workspace, "image_to_image", model="sd1.5", plate=(65, 64))
    before = files_under(tmp_path)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == 422
    assert (
        "65x64 = 4160 pixels, over DD_MAX_INPUT_PIXELS (4096 pixels)"
        in (response.json()["error"]["message"])
    )
    assert_nothing_happened(client, tmp_path, before)
    body = image_request(workspace, "image_to_image", model="sd1.5", plate=(64, 64))
    assert client.post("/api/images?wait=60", json=body).json()["status"] == "succeeded"


def test_a_declared_length_over_the_route_limit_is_refused_unread(client: TestClient):
    too_big = str(MAX_JSON_BYTES + 1)
    response = client.post(
        "/api/images",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": too_big},
    )
    assert response.status_code == 413 and response.headers["connection"] == "close"
    assert response.json()["error"] == {
        "type": "payload_too_large",
        "message": "too large: a request body is at most 128 MiB (send large inputs through "
        "POST /api/files)",
        "field": "body",
    }
    # The upload route takes more: the same length passes on to the route (which finds no
    # file in this body); over the upload limit, it is refused too.
    upload = client.post(
        "/api/files",
        content=b"--x--\r\n",
        headers={"content-type": "multipart/form-data; boundary=x", "content-length": too_big},
    )
    assert upload.status_code == 422 and upload.json()["error"]["field"] == "file"
    huge = str(api.common.router.MAX_UPLOAD_BYTES + 2**20 + 1)
    upload = client.post(
        "/api/files",
        content=b"--x--\r\n",
        headers={"content-type": "multipart/form-data; boundary=x", "content-length": huge},
    )
    assert upload.status_code == 413
    assert upload.json()["error"] == {
        "type": "payload_too_large",
        "message": "too large: an upload is at most 1024 MiB",
        "field": "file",
    }
    assert client.get("/api/jobs").json() == []


def test_a_chunked_upload_is_cut_at_the_limit(make_settings, monkeypatch, tmp_path: Path):
    """The app as a server drives it for a chunked upload (http.request messages with
    more_body, no Content-Length): reading stops at the limit, the answer is 413."""
    monkeypatch.setattr(api.common.router, "MAX_UPLOAD_BYTES", 2**20)  # limit: 2 MiB
    app = create_app(make_settings(), devices=["cpu"])
    head = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    chunk = bytes(2**16)
    received = 0
    sent: list[Message] = []

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": head if received == 1 else chunk, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/files",
        "raw_path": b"/api/files",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"multipart/form-data; boundary=x"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert b'"field":"file"' in sent[1]["body"]
    # The head, then 32 chunks: the one that passed 2 MiB was the last one read.
    assert received == 1 + (2 * 2**20) // len(chunk)
    assert files_under(tmp_path / "data" / "uploads") == []
