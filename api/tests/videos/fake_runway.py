"""A small real HTTP server speaking Runway's API as the ``runwayml`` SDK calls it, for tests
(point ``RUNWAYML_BASE_URL`` at ``FakeRunway.base_url``). It records every request.

- ``POST /v1/image_to_video`` checks the body as Runway documents it (model, a PNG/JPEG
  data URI under 5 MB, the model's ratios and durations, seed, prompt) and answers ``{id}``;
- ``GET /v1/tasks/{id}`` walks the task through ``statuses`` (one step per poll, the last
  repeated): PENDING, THROTTLED, RUNNING with ``progress``, SUCCEEDED with ``output: [url]``,
  FAILED with ``failure`` and ``failureCode``, CANCELLED;
- ``DELETE /v1/tasks/{id}`` cancels (or deletes) the task: 204, then 404 for it;
- ``GET /outputs/{id}.mp4`` serves a real H.264 mp4 (PyAV): the ratio's size divided by
  ``video_scale`` (even), ``duration * 24`` frames at 24 fps.

Every ``/v1`` call needs ``Authorization: Bearer <KEY>`` (else 401) and the
``X-Runway-Version`` header the SDK sends (else 400). ``error`` (status, body, headers) makes
every ``/v1`` call answer that instead.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import av
import numpy as np
from PIL import Image

KEY = "test-runway-secret"
VERSION = "2024-11-06"
FPS = 24
MAX_DATA_URI = 5 * 1024 * 1024
# What Runway accepts per model (runwayml's types; see api/videos/models/runway.py).
RATIOS = {
    "gen4_turbo": {"1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672"},
    "gen3a_turbo": {"1280:768", "768:1280"},
}
DURATIONS = {"gen4_turbo": set(range(2, 11)), "gen3a_turbo": {5, 10}}
DATA_URI = re.compile(r"data:image/(png|jpeg|jpg|webp);base64,(.*)", re.DOTALL)
SUCCEEDED = ("SUCCEEDED", None)
DEFAULT_STATUSES = [("PENDING", None), ("RUNNING", 0.25), ("RUNNING", 0.75), SUCCEEDED]


@dataclass
class Received:
    """One request as the fake Runway saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)  # {} when the request had none


@dataclass
class Task:
    id: str
    request: dict[str, Any]
    created_at: str
    polls: int = 0
    deleted: bool = False
    image: Image.Image | None = None  # the promptImage, decoded


@dataclass
class Failure:
    message: str
    code: str | None = None


class FakeRunway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.tasks: dict[str, Task] = {}
        # One entry per poll, the last repeated: (status, progress) or a Failure (FAILED).
        self.statuses: list[tuple[str, float | None] | Failure] = list(DEFAULT_STATUSES)
        self.error: tuple[int, dict[str, Any], dict[str, str]] | None = None
        self.video_scale = 16
        self._videos: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, method: str, prefix: str = "/v1/") -> list[Received]:
        return [r for r in self.received if r.method == method and r.path.startswith(prefix)]

    def video(self, ratio: str, duration: int) -> bytes:
        """The mp4 a task of this ratio and duration gets (made once)."""
        with self._lock:
            if (ratio, duration) not in self._videos:
                self._videos[ratio, duration] = make_mp4(ratio, duration, self.video_scale)
            return self._videos[ratio, duration]


def make_mp4(ratio: str, duration: int, scale: int) -> bytes:
    """A real H.264 yuv420p mp4: a gradient that moves one step a frame."""
    width, height = (max(2, int(side) // scale // 2 * 2) for side in ratio.split(":"))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        ramp = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
        for index in range(duration * FPS):
            pixels = np.stack([ramp + index, ramp, 255 - ramp], axis=-1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _bad_request(body: dict[str, Any]) -> str | None:
    """Runway's answer to an image_to_video body it can't take, or None."""
    model = body.get("model")
    if model not in RATIOS:
        return f"Model variant {model} is not available"
    image = body.get("promptImage")
    if not isinstance(image, str):
        return "promptImage: Required"
    if len(image) >= MAX_DATA_URI:
        return "promptImage: the data URI must be under 5MB"
    match = DATA_URI.fullmatch(image)
    if match is None:
        return "promptImage: Invalid data URI"
    try:
        Image.open(io.BytesIO(base64.b64decode(match[2], validate=True))).verify()
    except (binascii.Error, ValueError, OSError):
        return "promptImage: Invalid image"
    if body.get("ratio") not in RATIOS[model]:
        return f"ratio: Invalid enum value for {model}"
    if "duration" in body and body["duration"] not in DURATIONS[model]:
        return f"duration: Invalid value for {model}"
    seed = body.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
        return "seed: Number must be between 0 and 4294967295"
    prompt = body.get("promptText")
    if prompt is not None and not 0 < len(prompt.encode("utf-16-le")) // 2 <= 1000:
        return "promptText: String must contain between 1 and 1000 character(s)"
    unknown = set(body) - {"model", "promptImage", "ratio", "duration", "seed", "promptText"}
    if unknown:
        return f"Unrecognized key(s) in object: {', '.join(sorted(unknown))}"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: FakeRunway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _record(self) -> Received:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length) if length else b""
        received = Received(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            json.loads(raw) if raw else {},
        )
        self.server.received.append(received)
        return received

    def _refused(self) -> bool:
        """Answer the auth, version and forced errors Runway would give; True if it did."""
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._answer(401, {"error": "Incorrect API secret provided"})
        elif self.headers.get("X-Runway-Version") != VERSION:
            self._answer(400, {"error": "The X-Runway-Version header is missing or invalid"})
        elif self.server.error is not None:
            self._answer(*self.server.error)
        else:
            return False
        return True

    def do_POST(self) -> None:
        received = self._record()
        if self._refused():
            return
        if self.path != "/v1/image_to_video":
            return self._answer(404, {"error": f"no route {self.path}"})
        body = received.body
        if problem := _bad_request(body):
            return self._answer(400, {"error": problem})
        match = DATA_URI.fullmatch(body["promptImage"])
        assert match is not None  # _bad_request checked it
        image = match[2]
        with Image.open(io.BytesIO(base64.b64decode(image))) as picture:
            picture.load()
            decoded = picture.copy()
        task = Task(str(uuid.uuid4()), body, datetime.now(UTC).isoformat(), image=decoded)
        self.server.tasks[task.id] = task
        self._answer(200, {"id": task.id})

    def _task(self) -> Task | None:
        match = re.fullmatch(r"/v1/tasks/([0-9a-f-]+)", self.path)
        task = self.server.tasks.get(match[1]) if match else None
        if task is None or task.deleted:
            self._answer(404, {"error": "Task not found"})
            return None
        return task

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/outputs/"):
            return self._output()
        if self._refused() or (task := self._task()) is None:
            return
        statuses = self.server.statuses
        state = statuses[min(task.polls, len(statuses) - 1)]
        task.polls += 1
        answer: dict[str, Any] = {"id": task.id, "createdAt": task.created_at}
        if isinstance(state, Failure):
            answer |= {"status": "FAILED", "failure": state.message, "cost": {"credits": 0}}
            if state.code is not None:
                answer["failureCode"] = state.code
        elif state[0] == "SUCCEEDED":
            url = f"{self.server.base_url}/outputs/{task.id}.mp4"
            answer |= {"status": "SUCCEEDED", "output": [url], "cost": {"credits": 25}}
        elif state[0] == "CANCELLED":
            answer |= {"status": "CANCELLED", "cost": {"credits": 0}}
        else:
            answer |= {"status": state[0], "estimatedCost": {"credits": 25}}
            if state[0] == "RUNNING":
                answer["progress"] = state[1]
        self._answer(200, answer)

    def do_DELETE(self) -> None:
        self._record()
        if self._refused() or (task := self._task()) is None:
            return
        task.deleted = True
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _output(self) -> None:
        match = re.fullmatch(r"/outputs/([0-9a-f-]+)\.mp4", self.path)
        task = self.server.tasks.get(match[1]) if match else None
        if task is None or task.deleted:
            return self._answer(404, {"error": "not found"})
        data = self.server.video(task.request["ratio"], task.request.get("duration", 5))
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serving() -> Iterator[FakeRunway]:
    """The fake Runway, serving on a thread until the block ends."""
    server = FakeRunway()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
