"""Exact re-runs through HTTP on the tiny models: a job again (POST /api/jobs/{id}/rerun,
with overrides checked as a fresh submit), and an output again from the request it carries
(POST /api/images/rerun: PNG, EXR and an image of a batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import OpenEXR
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from api.tests.conftest import files_under, image_request, run_job, write_image


def pixels(path: Path | str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def exr_pixels(path: Path | str) -> np.ndarray:
    with OpenEXR.File(str(path)) as file:
        return np.array(file.channels()["RGB"].pixels)


def rerun(client: TestClient, url: str, body: dict | None = None) -> dict:
    response = client.post(f"{url}?wait=120", json=body)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    return job


def test_a_job_runs_again_with_the_same_pixels_or_with_overrides(
    client: TestClient, workspace: Path
):
    first = run_job(client, image_request(workspace, "image_to_image", model="sd1.5"))
    again = rerun(client, f"/api/jobs/{first['id']}/rerun")
    assert again["id"] != first["id"] and again["request"] == first["request"]
    [a], [b] = first["result"]["images"], again["result"]["images"]
    assert a["path"] != b["path"]  # each job its own folder in the data dir
    assert np.array_equal(pixels(a["path"]), pixels(b["path"]))

    other = rerun(client, f"/api/jobs/{first['id']}/rerun", {"overrides": {"seed": 8}})
    assert other["request"] == first["request"] | {"seed": 8}
    assert not np.array_equal(pixels(a["path"]), pixels(other["result"]["images"][0]["path"]))
    fresh = rerun(client, f"/api/jobs/{first['id']}/rerun", {"overrides": {"seed": None}})
    assert isinstance(fresh["request"]["seed"], int)  # drawn anew, as a fresh submit does


def test_overrides_are_checked_as_a_fresh_submit(
    client: TestClient, workspace: Path, tmp_path: Path
):
    plate = workspace / "plate.png"
    first = run_job(client, image_request(workspace, "image_to_image", model="sd1.5"))
    url = f"/api/jobs/{first['id']}/rerun"
    before = files_under(tmp_path)
    cases = [
        ({"num_inference_steps": 0}, "overrides.num_inference_steps", "greater than or equal"),
        ({"steps": 3}, "overrides.steps", "num_inference_steps"),  # did you mean
        ({"model": "sd9"}, "overrides.model", "unknown image model"),
        ({"depth_format": "exr"}, "overrides.depth_format", "does not apply to sd1.5"),
        ({"input_image_path": "/etc/passwd"}, "overrides.input_image_path", "outside"),
        (
            {"bit_depth": 16, "output_image_path": str(workspace / "a.jpg")},
            "overrides.bit_depth",
            "needs a .png or .tif",
        ),
    ]
    for overrides, field, message in cases:
        response = client.post(url, json={"overrides": overrides})
        assert response.status_code in (403, 422), response.text
        error = response.json()["error"]
        assert error["field"] == field, error
        assert message in error["message"], error
    response = client.post(url, json={"overridez": {}})
    assert response.status_code == 422 and response.json()["error"]["field"] == "overridez"
    assert client.post("/api/jobs/nope/rerun").status_code == 404
    plate.unlink()  # the recorded input is gone: named as the request names it
    response = client.post(url)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "input_image_path"
    assert len(client.get("/api/jobs").json()) == 1  # nothing queued
    assert files_under(tmp_path) == [p for p in before if p != plate]


def test_an_image_of_a_batch_runs_again_from_its_file(client: TestClient, workspace: Path):
    out = workspace / "shots" / "sh010.png"
    body = image_request(workspace, "text_to_image", model="sdxl", num_images=3)
    job = run_job(client, body | {"output_image_path": str(out)})
    second = Path(job["result"]["images"][1]["path"])
    original = pixels(second)

    again = rerun(client, "/api/images/rerun", {"image_path": str(second)})
    assert again["request"]["seed"] == 8 and again["request"]["num_images"] == 1
    [image] = again["result"]["images"]
    assert image["path"] == str(second)  # where it was written, with a new take beside it
    assert np.array_equal(pixels(second), original)
    assert len(list((out.parent / "tmp").glob("sh010_0002_*.png"))) == 2

    elsewhere = workspace / "elsewhere.png"
    moved = rerun(
        client,
        "/api/images/rerun",
        {"image_path": str(second), "overrides": {"output_image_path": str(elsewhere)}},
    )
    assert moved["result"]["images"][0]["path"] == str(elsewhere)
    assert np.array_equal(pixels(elsewhere), original)


def test_an_exr_runs_again_from_its_file(client: TestClient, workspace: Path):
    exr = workspace / "plate.exr"
    body = image_request(workspace, "inpainting", model="sd1.5", output_image_path=str(exr))
    run_job(client, body)
    original = exr_pixels(exr)
    copy = workspace / "copy.exr"  # e.g. a file the artist kept: its own request moves with it
    copy.write_bytes(exr.read_bytes())
    exr.unlink()
    rerun(client, "/api/images/rerun", {"image_path": str(copy)})
    assert np.array_equal(exr_pixels(exr), original)


def test_what_cannot_be_rerun_is_refused(client: TestClient, workspace: Path, tmp_path: Path):
    # a JPEG of a long prompt: its metadata was cut to fit, so its request is not whole
    long = image_request(workspace, "text_to_image", model="sd1.5", prompt="😀" * 10_000)
    jpeg = workspace / "long.jpg"
    job = run_job(client, long | {"output_image_path": str(jpeg)})
    foreign = write_image(workspace / "foreign.png")
    cases = [
        (str(foreign), 422, "carries no deferred-diffusion metadata"),
        ("/etc/passwd", 403, "outside the allowed roots"),
        (str(workspace / "missing.png"), 422, "does not exist"),
        (str(jpeg), 422, f"re-run its job instead (POST /api/jobs/{job['id']}/rerun)"),
    ]
    before = files_under(tmp_path)
    for path, status, message in cases:
        response = client.post("/api/images/rerun", json={"image_path": path})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["field"] == "image_path" and message in error["message"], error
    # a request recorded by hand that is not a valid one: refused like a fresh submit
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("deferred-diffusion", json.dumps({"request": {"model": "sd1.5", "seed": -1}}))
    forged = workspace / "forged.png"
    Image.new("RGB", (8, 8)).save(forged, pnginfo=chunk)
    response = client.post("/api/images/rerun", json={"image_path": str(forged)})
    assert response.status_code == 422 and response.json()["error"]["field"] == "seed"
    assert len(client.get("/api/jobs").json()) == 1  # only the JPEG's
    assert files_under(tmp_path) == sorted([*before, forged])


def test_a_job_of_a_kind_without_reruns_answers_409(client: TestClient):
    """Image and video jobs can be re-run; a text job is refused, nothing queued."""
    body = {"model": "qwen-2.5-vl", "messages": [{"role": "user", "content": "hello"}]}
    job = client.post("/api/texts", json=body).json()
    response = client.post(f"/api/jobs/{job['id']}/rerun")
    assert response.status_code == 409, response.text
    assert "jobs of kind texts can't be re-run" in response.json()["error"]["message"]
    client.delete(f"/api/jobs/{job['id']}")
    assert len(client.get("/api/jobs").json()) == 1
