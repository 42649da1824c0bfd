"""Runway image→video through the official ``runwayml`` SDK, pointed (RUNWAYML_BASE_URL) at a
small local server that speaks Runway's HTTP API and records every request it gets."""

from __future__ import annotations

import base64
import io
import os
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import runwayml.types.image_to_video_create_params as sdk_params
from PIL import Image

from api.common.errors import JobCancelled, JobFailure
from api.common.video import decode_mp4, probe_mp4
from api.tests.conftest import write_image
from api.tests.videos.fake_runway import KEY, VERSION, Failure, FakeRunway, serving
from api.videos.models import runway
from api.videos.models.runway import MODELS, RunwayVideo

GEN4 = MODELS["runway-gen4-turbo"]
GEN3A = MODELS["runway-gen3a-turbo"]


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunway]:
    """The fake Runway, with the SDK's environment pointing at it (never the real one)."""
    with serving() as server:
        monkeypatch.setenv("RUNWAYML_BASE_URL", server.base_url)
        monkeypatch.setenv("RUNWAYML_API_SECRET", KEY)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.delenv("RUNWAYML_CUSTOM_HEADERS", raising=False)
        yield server


class Job:
    """What a job runner gives ``generate``: progress and cancel checks, here recorded."""

    def __init__(self, cancel_after_polls: int | None = None, cancel_at_step: int | None = None):
        self.steps: list[tuple[int, int]] = []
        self.statuses: list[tuple[str, str]] = []
        self.cancel_after_polls = cancel_after_polls
        self.cancel_at_step = cancel_at_step

    def progress(self, step: int, total: int) -> None:
        self.steps.append((step, total))
        if self.cancel_at_step is not None and step >= self.cancel_at_step:
            raise JobCancelled("job")

    def check_cancelled(self) -> None:
        if self.cancel_after_polls is not None and len(self.statuses) >= self.cancel_after_polls:
            raise JobCancelled("job")

    def on_status(self, task_id: str, status: str) -> None:
        self.statuses.append((task_id, status))


def generate(
    image: Image.Image,
    model: runway.RunwayModel = GEN4,
    job: Job | None = None,
    prompt: str | None = "the crate drifts out to sea",
    seed: int = 7,
    duration: int = 2,
    **options,
) -> RunwayVideo:
    job = job or Job()
    return runway.generate(
        model,
        image,
        prompt,
        seed,
        duration,
        job.progress,
        job.check_cancelled,
        api_key=os.environ.get("RUNWAYML_API_SECRET"),  # the provider fixture's
        base_url=os.environ.get("RUNWAYML_BASE_URL"),
        on_status=job.on_status,
        poll_interval=0.001,
        **options,
    )


def plate(size: tuple[int, int], seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), np.uint8))


def sent_image(uri: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        image.load()
        return image.copy()


def decode(mp4: bytes) -> tuple[int, float, int, int]:
    """(frames, fps, width, height) of an mp4: its frames decoded, its rate from the headers."""
    frames = decode_mp4(mp4)
    return len(frames), probe_mp4(mp4).fps, frames.shape[2], frames.shape[1]


def test_image_to_video(provider: FakeRunway, tmp_path: Path):
    image = Image.open(write_image(tmp_path / "plate.png", (96, 54))).convert("RGB")
    job = Job()
    video = generate(image, job=job, seed=7, duration=5)

    [create] = provider.calls("POST")
    assert create.path == "/v1/image_to_video"
    assert create.headers["authorization"] == f"Bearer {KEY}"
    assert create.headers["x-runway-version"] == VERSION
    uri = create.body.pop("promptImage")
    assert create.body == {
        "model": "gen4_turbo",
        "promptText": "the crate drifts out to sea",
        "ratio": "1280:720",  # 96 x 54 is 16:9
        "duration": 5,
        "seed": 7,
    }
    assert uri.startswith("data:image/png;base64,")  # small: lossless
    assert np.array_equal(np.asarray(sent_image(uri)), np.asarray(image))

    # Polled until SUCCEEDED; Runway's progress reported in percent, 100 once downloaded.
    [task] = provider.tasks.values()
    polls = provider.calls("GET", "/v1/tasks/")
    assert [p.path for p in polls] == [f"/v1/tasks/{task.id}"] * 4
    assert all(p.headers["authorization"] == f"Bearer {KEY}" for p in polls)
    assert job.statuses == [
        (task.id, status) for status in ("PENDING", "RUNNING", "RUNNING", "SUCCEEDED")
    ]
    assert job.steps == [(0, 100), (0, 100), (25, 100), (75, 100), (100, 100)]

    # The output URL's bytes, downloaded without Runway's key (it is a signed URL).
    [download] = provider.calls("GET", "/outputs/")
    assert download.path == f"/outputs/{task.id}.mp4"
    assert "authorization" not in download.headers
    assert video.mp4 == provider.video("1280:720", 5)
    assert decode(video.mp4) == (120, 24.0, 80, 44)  # the fake's video: 1/16 of 1280 x 720
    assert provider.calls("DELETE") == []

    assert (video.task_id, video.model_id, video.ratio) == (task.id, "gen4_turbo", "1280:720")
    assert (video.width, video.height, video.duration, video.fps, video.frames) == (
        1280,
        720,
        5,
        24,
        120,
    )
    assert (video.seed, video.image_format, video.image_size, video.polls) == (
        7,
        "png",
        (96, 54),
        4,
    )
    assert set(video.timings) == {"provider_s", "download_s"}


def test_without_a_prompt_no_prompt_text_is_sent(provider: FakeRunway):
    provider.statuses = [("SUCCEEDED", None)]
    generate(plate((64, 64)), prompt=None)
    [create] = provider.calls("POST")
    assert "promptText" not in create.body and create.body["ratio"] == "960:960"


@pytest.mark.parametrize(
    ("model", "size", "ratio"),
    [
        (GEN4, (1920, 1080), (1280, 720)),
        (GEN4, (1080, 1920), (720, 1280)),
        (GEN4, (1000, 1000), (960, 960)),
        (GEN4, (1440, 1080), (1104, 832)),  # 4:3
        (GEN4, (1080, 1440), (832, 1104)),
        (GEN4, (2048, 858), (1584, 672)),  # 2.39:1 scope
        (GEN4, (1100, 1000), (960, 960)),
        (GEN3A, (1920, 1080), (1280, 768)),
        (GEN3A, (1080, 1920), (768, 1280)),
        (GEN3A, (1000, 1000), (1280, 768)),  # a tie: the first listed
    ],
)
def test_ratio_nearest_to_the_aspect(model, size, ratio):
    assert runway.ratio_for(model, *size) == ratio


def test_gen3a_turbo_request(provider: FakeRunway):
    provider.statuses = [("SUCCEEDED", None)]
    video = generate(plate((72, 120)), model=GEN3A, duration=10, seed=4294967295)
    [create] = provider.calls("POST")
    assert create.body["model"] == "gen3a_turbo" and create.body["ratio"] == "768:1280"
    assert create.body["duration"] == 10 and create.body["seed"] == 4294967295
    assert (video.width, video.height, video.frames) == (768, 1280, 240)
    assert decode(video.mp4)[:2] == (240, 24.0)


def test_model_table_matches_the_sdk():
    """gen4_turbo's ratios are the SDK's own; gen3a_turbo is no longer in the SDK (retired)."""
    ratios = typing.get_args(typing.get_type_hints(sdk_params.Gen4Turbo)["ratio"])
    assert {f"{w}:{h}" for w, h in GEN4.ratios} == set(ratios)
    models = {
        typing.get_args(typing.get_type_hints(params)["model"])[0]
        for params in typing.get_args(sdk_params.ImageToVideoCreateParams)
    }
    assert GEN4.model_id in models and GEN3A.model_id not in models
    assert GEN3A.retired is not None and GEN4.retired is None
    assert GEN4.durations == tuple(range(2, 11)) and GEN3A.durations == (5, 10)
    assert GEN4.fps == GEN3A.fps == 24


@pytest.mark.parametrize(
    ("model", "frames", "duration"),
    [
        (GEN4, None, 5),
        (GEN4, 1, 2),
        (GEN4, 100, 4),
        (GEN4, 121, 5),
        (GEN4, 100000, 10),
        (GEN3A, None, 5),
        (GEN3A, 180, 5),  # a tie: the shorter
        (GEN3A, 181, 10),
    ],
)
def test_duration_from_frames(model, frames, duration):
    assert runway.duration_for(model, frames) == duration


def test_a_large_image_goes_as_jpeg_under_the_limit(provider: FakeRunway):
    image = plate((1400, 1400))  # noise: about 7.8 MB as a PNG data URI
    provider.statuses = [("SUCCEEDED", None)]
    video = generate(image)
    [create] = provider.calls("POST")
    uri = create.body["promptImage"]
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < runway.MAX_DATA_URI_LENGTH
    assert sent_image(uri).size == (1400, 1400)  # the JPEG fits: no need to shrink
    assert video.image_format == "jpeg" and video.image_size == (1400, 1400)


def test_data_uri_shrinks_until_it_fits():
    image = plate((300, 200))
    uri, image_format, sent = runway.data_uri(image, limit=20_000)
    assert image_format == "jpeg" and len(uri) < 20_000
    assert sent.width < 300 and abs(sent.width / sent.height - 1.5) < 0.02
    assert sent_image(uri).size == sent.size
    small = plate((16, 16)).convert("RGBA")
    uri, image_format, sent = runway.data_uri(small)
    assert image_format == "png" and sent.mode == "RGB" and sent_image(uri).mode == "RGB"


def test_task_failure_fails_with_runways_message(provider: FakeRunway):
    provider.statuses = [
        ("RUNNING", 0.5),
        Failure("The prompt was flagged by moderation.", "SAFETY.INPUT.TEXT"),
    ]
    job = Job()
    with pytest.raises(JobFailure) as failure:
        generate(plate((64, 64)), job=job)
    [task] = provider.tasks.values()
    assert failure.value.type == "provider_error"
    assert str(failure.value) == (
        f"Runway: task {task.id} failed: The prompt was flagged by moderation. (SAFETY.INPUT.TEXT)"
    )
    assert [status for _, status in job.statuses] == ["RUNNING", "FAILED"]
    assert provider.calls("GET", "/outputs/") == [] and provider.calls("DELETE") == []


def test_task_cancelled_at_runway_fails(provider: FakeRunway):
    provider.statuses = [("CANCELLED", None)]
    with pytest.raises(JobFailure, match="was cancelled at Runway") as failure:
        generate(plate((64, 64)))
    assert failure.value.type == "provider_error"


def test_wrong_key_fails_with_runways_message(
    provider: FakeRunway, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("RUNWAYML_API_SECRET", "revoked")
    with pytest.raises(JobFailure) as failure:
        generate(plate((64, 64)))
    assert failure.value.type == "provider_error"
    assert str(failure.value) == "Runway: Incorrect API secret provided (HTTP 401)"
    [create] = provider.received
    assert create.headers["authorization"] == "Bearer revoked" and provider.tasks == {}


def test_rate_limit_fails_after_the_sdks_retries(provider: FakeRunway):
    provider.error = (429, {"error": "You have exceeded your rate limit."}, {"retry-after-ms": "1"})
    with pytest.raises(JobFailure) as failure:
        generate(plate((64, 64)))
    assert failure.value.type == "provider_error"
    assert str(failure.value) == "Runway: You have exceeded your rate limit. (HTTP 429)"
    assert len(provider.calls("POST")) == 3  # the SDK tries twice more, then gives up


def test_bad_request_fails_with_runways_message(provider: FakeRunway):
    with pytest.raises(JobFailure) as failure:
        generate(plate((64, 64)), prompt="x" * 1001)
    assert failure.value.type == "provider_error"
    assert str(failure.value) == (
        "Runway: promptText: String must contain between 1 and 1000 character(s) (HTTP 400)"
    )


def test_runway_unreachable_fails(provider: FakeRunway):
    provider.shutdown()
    provider.server_close()  # the port is closed: connection refused (the SDK retries twice)
    with pytest.raises(JobFailure) as failure:
        generate(plate((64, 64)))
    assert failure.value.type == "provider_error"
    assert str(failure.value).startswith("Runway: Connection error.")


def test_cancel_while_polling_deletes_the_task(provider: FakeRunway):
    provider.statuses = [("PENDING", None), ("RUNNING", 0.1)]  # then running for ever
    job = Job(cancel_after_polls=3)
    with pytest.raises(JobCancelled):
        generate(plate((64, 64)), job=job)
    [task] = provider.tasks.values()
    [delete] = provider.calls("DELETE")
    assert delete.path == f"/v1/tasks/{task.id}" and task.deleted
    assert delete.headers["authorization"] == f"Bearer {KEY}"
    assert delete.headers["x-runway-version"] == VERSION
    assert [status for _, status in job.statuses] == ["PENDING", "RUNNING", "RUNNING"]
    assert provider.calls("GET", "/outputs/") == []


def test_cancel_from_progress_deletes_the_task(provider: FakeRunway):
    provider.statuses = [("RUNNING", 0.4)]
    job = Job(cancel_at_step=40)  # a runner's progress() raises when the job was cancelled
    with pytest.raises(JobCancelled):
        generate(plate((64, 64)), job=job)
    [task] = provider.tasks.values()
    assert task.deleted and len(provider.calls("DELETE")) == 1
    assert job.steps == [(0, 100), (40, 100)]


def test_cancel_before_the_call_sends_nothing(provider: FakeRunway):
    with pytest.raises(JobCancelled):
        generate(plate((64, 64)), job=Job(cancel_at_step=0))
    assert provider.received == []


def test_task_over_its_time_is_deleted(provider: FakeRunway):
    provider.statuses = [("THROTTLED", None)]
    job = Job()
    with pytest.raises(JobFailure, match="did not finish in 0 s \\(still THROTTLED\\)"):
        generate(plate((64, 64)), job=job, timeout=0)
    [task] = provider.tasks.values()
    assert task.deleted and job.steps == [(0, 100), (0, 100)]


def test_missing_api_key_is_a_clear_error(provider: FakeRunway, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RUNWAYML_API_SECRET")
    with pytest.raises(JobFailure, match="no API key: set RUNWAYML_API_SECRET") as failure:
        generate(plate((64, 64)))
    assert failure.value.type == "provider_error"
    assert runway.API_KEY_ENV == "RUNWAYML_API_SECRET"
    assert provider.received == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"duration": 7, "model": GEN3A}, "makes \\[5, 10\\] s videos, not 7"),
        ({"seed": 2**32}, "seed"),
    ],
)
def test_values_runway_cannot_take_are_refused_before_any_call(
    provider: FakeRunway, changes, message
):
    with pytest.raises(ValueError, match=message):
        generate(plate((64, 64)), **changes)
    assert provider.received == []
