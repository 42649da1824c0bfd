"""Videos through HTTP on the tiny models: every local model and mode end to end (the mp4,
its take and URL, the PNG sequence, the frame count rule, same seed → same frames), the
refusals, and the contract every domain keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.common.video import decode_mp4, probe_mp4
from api.tests.conftest import files_under, write_image
from api.tests.contract import DomainContract
from api.videos.registry import VIDEO_MODELS

LOCAL = [name for name, model in VIDEO_MODELS.items() if not model.external]


def video_request(workspace: Path, model: str, **extra: Any) -> dict[str, Any]:
    """A small, fast request: a 96x64 plate, 2 steps, seed 3 (and a prompt where taken)."""
    body: dict[str, Any] = {
        "model": model,
        "input_image_path": str(write_image(workspace / "plate.png", (96, 64))),
        "num_inference_steps": 2,
        "seed": 3,
    }
    if VIDEO_MODELS[model].prompt:
        body["prompt"] = "a crate drifting on the sea"
    return body | extra


def run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/videos?wait=300", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    return job


@pytest.mark.parametrize("model", LOCAL)
def test_image_to_video(client: TestClient, workspace: Path, model: str):
    out = workspace / "shots" / "sh010" / "gen.mp4"
    frames = workspace / "shots" / "sh010" / "frames" / "gen.####.png"
    job = run(
        client,
        video_request(
            workspace,
            model,
            output_video_path=str(out),
            output_frames_path=str(frames),
            start_frame=1001,
        ),
    )
    result = job["result"]
    video = result["video"]
    info = probe_mp4(out)
    assert (info.frames, info.width, info.height) == (
        video["frames"],
        video["width"],
        video["height"],
    )
    assert info.fps == video["fps"] == VIDEO_MODELS[model].fps
    assert video["frames"] == job["request"]["num_frames"]  # the tiny default: the fewest
    assert video["width"] / video["height"] == pytest.approx(96 / 64, rel=0.35)  # the plate's
    assert result["mode"] == "image_to_video" and result["tiny_weights"] is True
    assert info.metadata["model"] == model and info.metadata["job_id"] == job["id"]
    assert Path(video["take_path"]).read_bytes() == out.read_bytes()
    assert client.get(video["url"]).content == out.read_bytes()
    assert client.get(video["url"]).headers["content-type"] == "video/mp4"
    numbers = range(1001, 1001 + video["frames"])
    assert result["frame_paths"] == [str(frames).replace("####", str(n)) for n in numbers]
    decoded = decode_mp4(out)
    for path, pixels in zip(result["frame_paths"], decoded, strict=True):
        with Image.open(path) as image:
            assert image.size == (video["width"], video["height"])
            # the PNG holds the frame as made, the mp4 the same after H.264 and yuv420p (on
            # random weights' noise, colour at half resolution differs a lot: compare luma)
            png = np.asarray(image.convert("L"), float).ravel()
            mp4 = np.asarray(Image.fromarray(pixels).convert("L"), float).ravel()
            assert np.corrcoef(png, mp4)[0, 1] > 0.9


def test_text_to_video_and_frame_rounding(client: TestClient):
    job = run(
        client,
        {"model": "ltx-video", "prompt": "storm clouds", "num_frames": 12, "seed": 1}
        | {"num_inference_steps": 2},
    )
    assert job["result"]["mode"] == "text_to_video"
    assert job["request"]["num_frames"] == 9  # LTX makes 8k+1 frames: 12 → 9, and says so
    assert job["result"]["video"]["frames"] == 9


def test_same_seed_same_frames_other_seed_other_frames(client: TestClient, workspace: Path):
    def frames(seed: int) -> np.ndarray:
        job = run(client, video_request(workspace, "wan-2.1", seed=seed))
        return decode_mp4(client.get(job["result"]["video"]["url"]).content)

    first = frames(5)
    assert np.array_equal(first, frames(5))
    assert not np.array_equal(first, frames(6))


def test_step_cache_through_the_server(client: TestClient, workspace: Path):
    """step_cache: the result says how many transformer calls reused the cached blocks, the
    mp4's metadata records the threshold (a re-run repeats it), and the frames repeat."""
    body = video_request(workspace, "wan-2.1", num_inference_steps=4, step_cache=1.0)
    jobs = [run(client, body) for _ in range(2)]
    report = jobs[0]["result"]["step_cache"]
    assert report["threshold"] == 1.0 and report["calls"] == 8  # 4 steps, with and without
    assert 0 < report["reused"] < 8 and jobs[1]["result"]["step_cache"] == report
    clips = [decode_mp4(client.get(job["result"]["video"]["url"]).content) for job in jobs]
    assert np.array_equal(clips[0], clips[1])
    mp4 = client.get(jobs[0]["result"]["video"]["url"]).content
    assert probe_mp4(mp4).metadata["step_cache"] == 1.0
    plain = run(client, video_request(workspace, "wan-2.1", num_inference_steps=4))
    assert plain["result"]["step_cache"] is None


def test_listed_with_their_rules(client: TestClient):
    models = {m["name"]: m for m in client.get("/api/models").json() if m["domain"] == "videos"}
    assert set(models) == set(VIDEO_MODELS)
    ltx = models["ltx-video"]
    assert ltx["modes"] == ["image_to_video", "text_to_video"]
    assert ltx["frames"] == {"rule": "8k+1", "min": 9, "max": 257, "default": 161}
    assert ltx["defaults"]["fps"] == 24 and ltx["weights"]["tiny"] is True
    assert models["wan-2.1"]["modes"] == ["image_to_video"]
    assert {name for name, m in models.items() if m["step_cache"]} == {
        "cogvideox",
        "ltx-video",
        "wan-2.1",
    }
    assert models["runway-gen4-turbo"]["available"] is False
    assert "RUNWAYML_API_SECRET" in models["runway-gen4-turbo"]["reason"]
    assert "retired" in models["runway-gen3a-turbo"]["reason"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"input_image_path": None}, "input_image_path", "from an image only"),
        ({"num_frames": 0}, "num_frames", "greater than or equal to 1"),
        ({"num_frames": 100000}, "num_frames", "out of range"),
        ({"max_width": 100000}, "max_width", "less than or equal to 4096"),
        ({"model": "wan"}, "model", "did you mean 'wan-2.1'"),
        ({"input_image_path": "/etc/hostname"}, "input_image_path", "outside the allowed roots"),
        ({"input_image_path": "OUT/gone.png"}, "input_image_path", "does not exist"),
        ({"output_video_path": "OUT/out.mov"}, "output_video_path", ".mp4"),
        ({"output_frames_path": "OUT/frames/plate.png"}, "output_frames_path", "run of '#'"),
        ({"output_frames_path": "OUT/frames/a.##.b.##.png"}, "output_frames_path", "has 2"),
        ({"model": "stable-video-diffusion", "prompt": "x"}, "prompt", "takes no prompt"),
        (
            {"model": "stable-video-diffusion", "prompt": "", "step_cache": 0.1},
            "step_cache",
            "no transformer",
        ),
        ({"step_cache": 2}, "step_cache", "less than or equal to 1"),
        ({"step_cache": 0.1, "optimize_low_vram": True}, "step_cache", "not with optimize_low"),
        ({"model": "runway-gen4-turbo"}, "model", "RUNWAYML_API_SECRET"),
        ({"model": "runway-gen3a-turbo"}, "model", "retired"),
    ],
)
def test_refused_at_submit(
    client: TestClient, workspace: Path, tmp_path: Path, change: dict, field: str, words: str
):
    body = video_request(workspace, "wan-2.1", prompt="x")
    for key, value in change.items():
        if isinstance(value, str):
            value = value.replace("OUT", str(workspace))
        body[key] = value
    body = {key: value for key, value in body.items() if value is not None}
    before = files_under(tmp_path)
    response = client.post("/api/videos?wait=5", json=body)
    assert response.status_code in (403, 422), response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert client.get("/api/jobs").json() == []
    assert files_under(tmp_path) == before


class TestVideosKeepTheContract(DomainContract):
    kind = "videos"

    def quick(self, workspace: Path) -> dict[str, Any]:
        return video_request(workspace, "ltx-video")

    def slow(self, workspace: Path) -> dict[str, Any]:
        return video_request(workspace, "ltx-video", num_inference_steps=400, num_frames=33)

    def refused(self, workspace: Path) -> tuple[dict[str, Any], int, str]:
        return video_request(workspace, "cogvideox", input_image_path=None), 422, "input_image_path"
