"""gpt-image-1 through the official OpenAI SDK, pointed (OPENAI_BASE_URL) at a small local
server that speaks the OpenAI Images API and records every request it gets."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.tests.conftest import (
    assert_rejected,
    decode,
    files_under,
    png_metadata,
    write_image,
    write_mask,
)

KEY = "test-key"
COLOUR = (200, 40, 90)


@dataclass
class Upload:
    filename: str | None
    content_type: str
    data: bytes

    def image(self) -> Image.Image:
        return decode(self.data)


@dataclass
class Received:
    """One request as the fake provider saw it."""

    path: str
    headers: dict[str, str]
    fields: dict[str, Any] = field(default_factory=dict)  # JSON body or multipart text parts
    files: dict[str, list[Upload]] = field(default_factory=dict)  # multipart file parts


class FakeOpenAI(ThreadingHTTPServer):
    """``POST /v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart): answers
    a solid-colour PNG of the requested size, or the error it was told to give."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.error: tuple[int, dict[str, Any]] | None = None
        self.hold = threading.Event()  # cleared: requests wait until it is set again
        self.hold.set()
        self.arrived = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self) -> None:
        body = self._body()
        received = Received(self.path, {k.lower(): v for k, v in self.headers.items()})
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            received.fields = json.loads(body)
        elif content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True)
                assert isinstance(name, str) and isinstance(data, bytes), (name, data)
                if part.get_filename() is None:
                    received.fields[name] = data.decode()
                else:
                    upload = Upload(part.get_filename(), part.get_content_type(), data)
                    received.files.setdefault(name, []).append(upload)
        self.server.received.append(received)
        self.server.arrived.set()
        self.server.hold.wait(10)

        if self.path not in ("/v1/images/generations", "/v1/images/edits"):
            return self._answer(404, {"error": {"message": f"no route {self.path}"}})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._answer(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                    }
                },
            )
        if self.server.error is not None:
            return self._answer(*self.server.error)
        size = received.fields.get("size", "auto")
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        png = io.BytesIO()
        Image.new("RGB", (width, height), COLOUR).save(png, format="PNG")
        self._answer(
            200,
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png.getvalue()).decode()}]
                * int(received.fields.get("n", 1)),
                "quality": received.fields.get("quality"),
                "size": size,
                "usage": {
                    "input_tokens": 10,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": 10},
                    "output_tokens": 100,
                    "total_tokens": 110,
                },
            },
        )

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The fake provider, with the SDK's environment pointing at it (never the real one)."""
    server = FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.hold.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(provider: FakeOpenAI, make_client) -> TestClient:
    """A server started with the fake provider's key and address in its environment."""
    return make_client()


def submit(client: TestClient, body: dict, wait: int = 30) -> dict:
    response = client.post(f"/api/images?wait={wait}", json={"model": "gpt-image-1"} | body)
    assert response.status_code in (200, 202), response.text
    return response.json()


def succeeded(client: TestClient, body: dict) -> dict:
    job = submit(client, body)
    assert job["status"] == "succeeded", job["error"]
    return job


def test_text_to_image(client: TestClient, provider: FakeOpenAI, workspace: Path):
    out = workspace / "renders" / "crate.png"
    job = succeeded(
        client,
        {
            "prompt": "a rusty crate on a pier",
            "negative_prompt": "blurry",
            "seed": 5,
            "num_inference_steps": 8,
            "max_width": 1920,
            "max_height": 1080,
            "output_image_path": str(out),
        },
    )

    [call] = provider.received
    assert call.path == "/v1/images/generations"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.fields == {
        "model": "gpt-image-1",
        "prompt": "a rusty crate on a pier",
        "size": "1536x1024",  # 16:9 is nearest to 3:2
        "quality": "low",  # 8 steps
        "n": 1,
    }
    result = job["result"]
    assert result["mode"] == "text_to_image" and result["seed"] == 5
    assert result["tiny_weights"] is False and "provider_s" in result["timings"]
    [image] = result["images"]
    assert (image["width"], image["height"]) == (1536, 1024)  # the provider's size
    assert image["path"] == str(out)
    with Image.open(out) as written:
        assert written.size == (1536, 1024)
        assert written.convert("RGB").getpixel((10, 10)) == COLOUR
    meta = png_metadata(out)
    assert meta["model"] == "gpt-image-1" and meta["provider"] == "openai"
    assert meta["repo"] == "gpt-image-1" and meta["mode"] == "text_to_image"
    assert (meta["width"], meta["height"]) == (1536, 1024)
    assert meta["seed"] == 5 and meta["negative_prompt"] is None
    assert meta["job_id"] == job["id"] and meta["tiny_weights"] is False
    take = Path(image["take_path"])
    assert take.parent == out.parent / "tmp" and take.read_bytes() == out.read_bytes()
    assert client.get(image["url"]).content == out.read_bytes()
    assert job["progress"] == {"step": 1, "total": 1}


@pytest.mark.parametrize(
    ("size", "steps", "expected_size", "expected_quality"),
    [
        ((1024, 1024), None, "1024x1024", "auto"),
        ((1080, 1920), 30, "1024x1536", "medium"),
        ((1100, 1000), 31, "1024x1024", "high"),
        ((1300, 1000), 10, "1536x1024", "low"),
    ],
)
def test_size_from_aspect_and_quality_from_steps(
    client: TestClient, provider: FakeOpenAI, size, steps, expected_size, expected_quality
):
    body = {"prompt": "x", "max_width": size[0], "max_height": size[1]}
    if steps is not None:
        body["num_inference_steps"] = steps
    job = succeeded(client, body)
    [call] = provider.received
    assert (call.fields["size"], call.fields["quality"]) == (expected_size, expected_quality)
    assert job["request"]["num_inference_steps"] == steps


def test_image_to_image_is_an_edit_with_the_plate(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    plate = write_image(workspace / "plate.png", (96, 144))
    job = succeeded(
        client,
        {"prompt": "night", "input_image_path": str(plate), "num_inference_steps": 50},
    )

    [call] = provider.received
    assert call.path == "/v1/images/edits"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["content-type"].startswith("multipart/form-data")
    assert call.fields == {
        "model": "gpt-image-1",
        "prompt": "night",
        "size": "1024x1536",  # a 2:3 plate
        "quality": "high",
        "n": "1",
    }
    assert "mask" not in call.files
    [sent] = call.files.get("image[]") or call.files["image"]
    assert sent.content_type == "image/png"
    # The plate, fitted into the default 1024 x 1024 bounds like every model's input.
    expected = Image.open(plate).convert("RGB").resize((672, 1024), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(sent.image()), np.asarray(expected))
    assert job["result"]["mode"] == "image_to_image"
    [image] = job["result"]["images"]
    assert (image["width"], image["height"]) == (1024, 1536)


def test_ip_adapter_images_are_extra_references(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    plate = write_image(workspace / "plate.png", (64, 64))
    first = write_image(workspace / "style.png", (40, 30), seed=1)
    second = write_image(workspace / "face.png", (1600, 800), seed=2)
    job = succeeded(
        client,
        {
            "prompt": "in this style, with this face",
            "input_image_path": str(plate),
            "ip_adapters": [
                {"model": "style", "image_path": str(first), "scale": 0.6},
                {"model": "face", "image_path": str(second)},
            ],
        },
    )

    [call] = provider.received
    assert call.path == "/v1/images/edits" and call.fields["size"] == "1024x1024"
    sent = call.files.get("image[]") or call.files["image"]
    assert [upload.filename for upload in sent] == [
        "image.png",
        "reference_1.png",
        "reference_2.png",
    ]
    assert sent[0].image().size == (1024, 1024)  # the plate, fitted into the bounds
    # References go as given, larger ones shrunk to 1536 px a side.
    assert np.array_equal(np.asarray(sent[1].image()), np.asarray(Image.open(first).convert("RGB")))
    assert sent[2].image().size == (1536, 768)
    meta = png_metadata(Path(job["result"]["images"][0]["path"]))
    assert [a["image_path"] for a in meta["ip_adapters"]] == [str(first), str(second)]
    assert all("weights" not in a for a in meta["ip_adapters"])


def test_text_to_image_with_references_edits_the_references(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    reference = write_image(workspace / "character.png", (64, 96))
    job = succeeded(
        client,
        {
            "prompt": "this character on a beach",
            "max_width": 1024,
            "max_height": 1536,
            "ip_adapters": [{"model": "style", "image_path": str(reference)}],
        },
    )
    [call] = provider.received
    assert call.path == "/v1/images/edits" and "mask" not in call.files
    [sent] = call.files.get("image[]") or call.files["image"]
    assert sent.filename == "reference_1.png" and sent.image().size == (64, 96)
    assert call.fields["size"] == "1024x1536"
    assert job["result"]["mode"] == "text_to_image"


def test_reference_with_a_mask_is_refused(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    reference = write_image(workspace / "style.png")
    mask = write_mask(workspace / "where.png")
    response = client.post(
        "/api/images",
        json={
            "model": "gpt-image-1",
            "prompt": "x",
            "ip_adapters": [
                {"model": "style", "image_path": str(reference), "mask_path": str(mask)}
            ],
        },
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "ip_adapters.0.mask_path" and "mask" in error["message"]
    assert client.get("/api/jobs").json() == [] and provider.received == []


def test_inpainting_sends_the_mask_as_alpha(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    plate = write_image(workspace / "plate.png", (96, 64))
    mask = write_mask(workspace / "mask.png", (96, 64))
    job = succeeded(
        client,
        {
            "prompt": "a red car",
            "input_image_path": str(plate),
            "input_mask_path": str(mask),
            "max_width": 96,
            "max_height": 64,
        },
    )

    [call] = provider.received
    assert call.path == "/v1/images/edits"
    assert call.fields["size"] == "1536x1024" and call.fields["quality"] == "auto"
    [image] = call.files.get("image[]") or call.files["image"]
    [sent_mask] = call.files["mask"]
    assert sent_mask.content_type == "image/png"
    received = sent_mask.image()
    assert received.mode == "RGBA" and received.size == image.image().size == (96, 64)
    alpha = np.asarray(received.getchannel("A"))
    white = np.asarray(Image.open(mask).convert("L")) == 255
    assert white.any() and (~white).any()
    assert (alpha[white] == 0).all() and (alpha[~white] == 255).all()
    assert job["result"]["mode"] == "inpainting"


def test_provider_error_fails_the_job_with_its_message(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    message = "Your request was rejected by the safety system."
    provider.error = (
        400,
        {
            "error": {
                "message": message,
                "type": "image_generation_user_error",
                "param": None,
                "code": "moderation_blocked",
            }
        },
    )
    out = workspace / "never.png"
    job = submit(client, {"prompt": "x", "output_image_path": str(out)})
    assert job["status"] == "failed"
    assert job["error"]["type"] == "provider_error"
    assert job["error"]["message"].startswith("OpenAI: ")
    assert message in job["error"]["message"] and "400" in job["error"]["message"]
    assert job["result"] is None
    assert not out.exists() and files_under(workspace) == []

    provider.error = None  # the server keeps serving
    assert client.get("/health").status_code == 200
    assert succeeded(client, {"prompt": "x"})["result"]["images"]


def test_wrong_key_fails_the_job(provider: FakeOpenAI, make_client):
    client = make_client(openai_api_key="revoked")
    job = submit(client, {"prompt": "x"})
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert "Incorrect API key provided" in job["error"]["message"]
    assert provider.received[0].headers["authorization"] == "Bearer revoked"


def test_provider_unreachable_fails_the_job(
    client: TestClient, provider: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
):
    provider.shutdown()
    provider.server_close()  # the port is closed: connection refused (the SDK retries twice)
    job = submit(client, {"prompt": "x"})
    assert job["status"] == "failed" and job["error"]["type"] == "provider_error"
    assert job["error"]["message"].startswith("OpenAI: Connection error.")


def test_cancel_during_the_call_writes_nothing(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    provider.hold.clear()
    out = workspace / "never.png"
    job = submit(client, {"prompt": "x", "output_image_path": str(out)}, wait=0)
    assert provider.arrived.wait(10)
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200
    provider.hold.set()
    done = client.get(f"/api/jobs/{job['id']}?wait=30").json()
    assert done["status"] == "cancelled" and done["result"] is None
    assert not out.exists() and files_under(workspace) == []


def test_missing_api_key_is_refused_at_submit(
    provider: FakeOpenAI, make_client, workspace: Path, tmp_path: Path
):
    client = make_client(openai_api_key=None)
    plate = write_image(workspace / "plate.png")
    url = "data:image/png;base64," + base64.b64encode(plate.read_bytes()).decode()
    response = client.post(
        "/api/images?wait=10",
        json={
            "model": "gpt-image-1",
            "prompt": "x",
            "input_image_path": url,
            "output_image_path": str(workspace / "out.png"),
        },
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "model" and "OPENAI_API_KEY" in error["message"]
    assert client.get("/api/jobs").json() == []
    assert files_under(workspace) == [plate]  # no output, and the data URL was not saved
    assert files_under(tmp_path / "data" / "uploads") == []
    assert provider.received == []


def test_listed_as_external(client: TestClient, provider: FakeOpenAI):
    models = {m["name"]: m for m in client.get("/api/models").json()}
    gpt = models["gpt-image-1"]
    assert gpt["external"] is True and gpt["family"] == "openai"
    assert gpt["modes"] == ["image_to_image", "inpainting", "text_to_image"]
    assert gpt["weights"]["repo"] == "gpt-image-1" and gpt["weights"]["tiny"] is False
    assert provider.received == []


def test_a_provider_job_does_not_wait_behind_device_work(client: TestClient, provider: FakeOpenAI):
    """Jobs at a provider have a runner of their own: a long local job doesn't hold them."""
    long = client.post(
        "/api/images",
        json={"model": "sd1.5", "prompt": "x", "num_inference_steps": 500}
        | {"max_width": 256, "max_height": 256},
    ).json()
    job = succeeded(client, {"prompt": "x"})
    assert job["worker"] == "runner-external"
    assert client.get(f"/api/jobs/{long['id']}").json()["status"] in ("queued", "running")
    client.delete(f"/api/jobs/{long['id']}")


def test_a_batch_is_one_call_for_n_images(
    client: TestClient, provider: FakeOpenAI, workspace: Path
):
    out = workspace / "crates.png"
    job = succeeded(client, {"prompt": "a crate", "num_images": 2, "output_image_path": str(out)})
    [call] = provider.received
    assert call.fields["n"] == 2
    paths = [image["path"] for image in job["result"]["images"]]
    assert paths == [str(workspace / "crates_0001.png"), str(workspace / "crates_0002.png")]
    assert all(image["seed"] is None for image in job["result"]["images"])  # none to give
    assert png_metadata(Path(paths[1]))["request"]["num_images"] == 1


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"output_image_path": "out.exr"}, "output_image_path"), ({"bit_depth": 16}, "bit_depth")],
)
def test_float_outputs_are_refused(
    client: TestClient, workspace: Path, tmp_path: Path, extra: dict, field: str
):
    """The provider sends 8-bit PNGs: an EXR or 16-bit file of one would only be an upcast."""
    if "output_image_path" in extra:
        extra = {"output_image_path": str(workspace / extra["output_image_path"])}
    body = {"model": "gpt-image-1", "prompt": "a crate"} | extra
    assert_rejected(client, tmp_path, body, 422, field, "sends 8-bit images")
