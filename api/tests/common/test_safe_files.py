"""Writes and downloads checked when they happen (links swapped in after submit), uploads
and data URLs when the allowed roots leave out the data dir, data URLs and uploads named
by their real format, and error messages that say how to fix a path."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.common import files
from api.common.errors import Forbidden
from api.common.files import WriteFolder, write_output
from api.tests.common.test_hostile_paths import SECRET, Scene, snapshot
from api.tests.conftest import run_job, write_image

QUICK = {
    "model": "sd1.5",
    "prompt": "x",
    "num_inference_steps": 2,
    "max_width": 64,
    "max_height": 64,
}
# Long enough on 2 CPU cores that the job after it is still queued when the test acts.
SLOW = QUICK | {"num_inference_steps": 500, "max_width": 256, "max_height": 256}


def use_write_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Write with the dir-fd mechanism (POSIX) or the portable one (what Windows gets:
    resolve and check again before each step)."""
    if mode == "dir_fd" and not files.DIR_FD_WRITES:
        pytest.skip("this OS can't write relative to an open folder")
    monkeypatch.setattr(files, "DIR_FD_WRITES", mode == "dir_fd")


@pytest.fixture(params=["dir_fd", "portable"])
def write_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    use_write_mode(monkeypatch, request.param)
    return request.param


@pytest.fixture
def scene(tmp_path: Path, workspace: Path) -> Scene:
    outside = tmp_path / "outside"
    write_image(outside / "sentinel.png")
    (outside / "secret.txt").write_bytes(SECRET)
    return Scene(tmp_path, workspace, outside)


def wait_for(client: TestClient, job_id: str, predicate, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never matched; last: {job}")


def run_after_swap(client: TestClient, body: dict, swap) -> dict:
    """Submit ``body`` behind a slow job, call ``swap()`` while it is queued, then let it
    run; returns the job once finished."""
    busy = client.post("/api/images", json=SLOW).json()
    job = client.post("/api/images", json=body)
    assert job.status_code == 202, job.text
    job = job.json()
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"
    swap()
    client.delete(f"/api/jobs/{busy['id']}")
    return wait_for(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"))


def swap_during_run(client: TestClient, body: dict, swap) -> dict:
    """Submit ``body`` (many steps), call ``swap()`` once it is denoising (its paths were
    checked again when it started), and return the job once finished: the swap is met
    only by the checks made when the files are written."""
    job = client.post("/api/images", json=body | {"num_inference_steps": 40}).json()
    wait_for(client, job["id"], lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    swap()
    return wait_for(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"))


# Write time ---------------------------------------------------------------------------


def _swap_take_folder(scene: Scene, out: Path) -> None:
    out.parent.mkdir(exist_ok=True)
    os.symlink(scene.outside, out.parent / "tmp")


def _swap_output_folder(scene: Scene, out: Path) -> None:
    out.parent.rmdir()
    os.symlink(scene.outside, out.parent)


def test_take_folder_swapped_for_a_link_while_queued(client: TestClient, scene: Scene):
    out = scene.show / "shot" / "out.png"
    before = snapshot(scene.outside)
    job = run_after_swap(
        client, QUICK | {"output_image_path": str(out)}, lambda: _swap_take_folder(scene, out)
    )
    assert job["status"] == "failed" and job["error"]["type"] == "invalid_input"
    message = job["error"]["message"]
    assert "take folder" in message and "leaves the allowed roots" in message
    assert str(scene.outside) in message
    assert snapshot(scene.outside) == before
    assert not out.exists()


@pytest.mark.parametrize(
    ("folder", "mode"),
    [("take folder", "dir_fd"), ("take folder", "portable"), ("output's folder", "dir_fd")],
)
def test_folder_swapped_for_a_link_while_the_job_runs(
    client: TestClient, scene: Scene, monkeypatch: pytest.MonkeyPatch, folder: str, mode: str
):
    use_write_mode(monkeypatch, mode)
    out = scene.show / "shot" / "out.png"
    out.parent.mkdir()
    swap = _swap_take_folder if folder == "take folder" else _swap_output_folder
    before = snapshot(scene.outside)
    job = swap_during_run(client, QUICK | {"output_image_path": str(out)}, lambda: swap(scene, out))
    assert job["status"] == "failed" and job["error"]["type"] == "invalid_input"
    message = job["error"]["message"]
    assert f"output_image_path: the {folder}" in message
    assert "outside the allowed roots" in message and "nothing was written" in message
    assert str(scene.outside) in message
    assert snapshot(scene.outside) == before  # nothing written outside
    assert (scene.outside / "secret.txt").read_bytes() == SECRET
    assert not os.path.lexists(out)  # both folders are checked before anything is written


def test_output_swapped_for_a_link_while_the_job_runs(client: TestClient, scene: Scene):
    """The new file replaces a link put at the output's name; it is never written through."""
    out = scene.show / "out.png"
    before = snapshot(scene.outside)
    job = swap_during_run(
        client,
        QUICK | {"output_image_path": str(out)},
        lambda: os.symlink(scene.outside / "secret.txt", out),
    )
    assert job["status"] == "succeeded", job["error"]
    assert not out.is_symlink() and Image.open(out).size == (64, 64)
    assert snapshot(scene.outside) == before


def test_output_swapped_for_a_link_while_queued(client: TestClient, scene: Scene):
    out = scene.show / "out.png"
    write_image(out)  # an earlier take of the shot

    def swap() -> None:
        out.unlink()
        os.symlink(scene.outside / "sentinel.png", out)

    before = snapshot(scene.outside)
    job = run_after_swap(client, QUICK | {"output_image_path": str(out)}, swap)
    assert job["status"] == "failed" and job["error"]["type"] == "invalid_input"
    assert "outside the allowed roots" in job["error"]["message"]
    assert snapshot(scene.outside) == before


def test_take_folder_link_inside_the_roots_is_followed(client: TestClient, scene: Scene):
    """A take folder linked to another folder inside the roots (a scratch disk) is fine."""
    scratch = scene.show / "scratch"
    scratch.mkdir()
    (scene.show / "shot").mkdir()
    os.symlink(scratch, scene.show / "shot" / "tmp")
    job = run_job(client, QUICK | {"output_image_path": str(scene.show / "shot" / "out.png")})
    take = Path(job["result"]["images"][0]["take_path"])
    assert (
        take.parent == scratch and take.read_bytes() == (scene.show / "shot/out.png").read_bytes()
    )


def test_a_link_swapped_in_between_check_and_open_is_never_followed(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
):
    """The race the dir-fd walk closes: the folder was checked (resolved inside the roots)
    and a link replaces one of its folders before it is opened. Here the check is made to
    see the folder as it was (its resolution returns the path unchanged)."""
    if not files.DIR_FD_WRITES:
        pytest.skip("this OS can't write relative to an open folder")
    (scene.show / "a").mkdir()
    os.symlink(scene.outside, scene.show / "a" / "b")  # swapped in after the check
    monkeypatch.setattr(files.os.path, "realpath", lambda path: str(path))
    before = snapshot(scene.outside)
    with pytest.raises(Forbidden) as refused:
        write_output(scene.show / "a" / "b" / "out.png", b"x", [scene.show], "output_image_path")
    assert "'b' is now a link" in refused.value.message
    assert snapshot(scene.outside) == before


def test_writes_never_go_through_a_link_at_the_final_name(scene: Scene, write_mode: str):
    """A link at the output's name is replaced by the new file, not written through."""
    out = scene.show / "out.png"
    os.symlink(scene.outside / "secret.txt", out)
    before = snapshot(scene.outside)
    take = write_output(out, b"new pixels", [scene.show], "output_image_path")
    assert not out.is_symlink() and out.read_bytes() == b"new pixels"
    assert take is not None and take.read_bytes() == b"new pixels"
    assert snapshot(scene.outside) == before


def test_write_folder_creates_folders_inside_the_roots_only(scene: Scene, write_mode: str):
    with WriteFolder(scene.show / "a" / "b" / "c", [scene.show], "field", "the folder") as folder:
        folder.write("x.png", b"data")
    assert (scene.show / "a" / "b" / "c" / "x.png").read_bytes() == b"data"
    assert oct((scene.show / "a/b/c/x.png").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in (scene.show / "a/b/c").iterdir()] == ["x.png"]  # no temp left
    with pytest.raises(Forbidden):
        WriteFolder(scene.show / ".." / "outside" / "new", [scene.show], "field", "the folder")
    assert not (scene.outside / "new").exists()


# Downloads ----------------------------------------------------------------------------


def test_download_never_follows_a_link_swapped_for_the_take(client: TestClient, scene: Scene):
    out = scene.show / "out.png"
    job = run_job(client, QUICK | {"output_image_path": str(out)})
    image = job["result"]["images"][0]
    served = client.get(image["url"])
    assert served.status_code == 200 and served.content == out.read_bytes()
    take = Path(image["take_path"])
    take.unlink()
    os.symlink(scene.outside / "secret.txt", take)
    refused = client.get(image["url"])
    assert refused.status_code == 404
    assert SECRET not in refused.content
    assert refused.json()["error"]["field"] == "name"


def test_download_of_a_data_dir_output_swapped_for_a_link(client: TestClient, scene: Scene):
    job = run_job(client, dict(QUICK))
    image = job["result"]["images"][0]
    path = Path(image["path"])
    assert client.get(image["url"]).content == path.read_bytes()
    path.unlink()
    os.symlink("/etc/passwd", path)
    refused = client.get(image["url"])
    assert refused.status_code == 404 and b"root:" not in refused.content


def test_download_refuses_what_is_not_a_regular_file(client: TestClient, scene: Scene):
    out = scene.show / "out.png"
    image = run_job(client, QUICK | {"output_image_path": str(out)})["result"]["images"][0]
    take = Path(image["take_path"])
    take.unlink()
    os.mkfifo(take)  # a reader would block on it forever
    assert client.get(image["url"]).status_code == 404
    take.unlink()
    take.mkdir()
    assert client.get(image["url"]).status_code == 404


def test_download_serves_ranges_and_closes_its_files(client: TestClient, scene: Scene):
    job = run_job(client, QUICK | {"output_image_path": str(scene.show / "out.png")})
    image = job["result"]["images"][0]
    data = Path(image["take_path"]).read_bytes()
    open_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        part = client.get(image["url"], headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        whole = client.get(image["url"])
        assert whole.content == data and whole.headers["content-type"] == "image/png"
        assert 'filename="out.png"' in whole.headers["content-disposition"]
    if open_before is not None:
        assert len(os.listdir("/proc/self/fd")) == open_before


# Uploads and data URLs when the allowed roots leave out the data dir -------------------


def _data_url(image: Image.Image, fmt: str, mime: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def test_upload_is_an_input_when_the_roots_leave_out_the_data_dir(make_client, scene: Scene):
    client = make_client(allowed_roots=[scene.show])
    data = write_image(scene.show / "plate.png").read_bytes()
    uploaded = client.post("/api/files", files={"file": ("plate.png", data, "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    path = uploaded.json()["path"]
    assert Path(path).parent == scene.tmp / "data" / "uploads"
    job = run_job(client, QUICK | {"input_image_path": path, "strength": 0.5})
    assert job["result"]["mode"] == "image_to_image"
    # ...but the upload folder is no place for outputs, nor is the rest of the data dir.
    for out in (Path(path).with_name("out.png"), scene.tmp / "data" / "x.png"):
        refused = client.post("/api/images", json=QUICK | {"output_image_path": str(out)})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["field"] == "output_image_path"
    # Outputs without a path still go to the data dir, and download.
    done = run_job(client, dict(QUICK))
    assert client.get(done["result"]["images"][0]["url"]).status_code == 200


def test_data_url_runs_when_the_roots_leave_out_the_data_dir(make_client, scene: Scene):
    client = make_client(allowed_roots=[scene.show])
    plate = Image.new("RGB", (64, 64), (90, 140, 200))
    body = QUICK | {
        "input_image_path": _data_url(plate, "PNG", "image/png"),
        "controlnets": [{"model": "canny", "image_path": _data_url(plate, "PNG", "image/png")}],
    }
    job = run_job(client, body)
    assert job["result"]["mode"] == "image_to_image"
    assert Path(job["request"]["input_image_path"]).parent == scene.tmp / "data" / "uploads"


@pytest.mark.parametrize(
    ("fmt", "mime", "suffix"),
    [
        ("PNG", "image/jpeg", ".png"),  # the MIME type lies: the bytes decide
        ("JPEG", "image/png", ".jpg"),
        ("WEBP", "image/webp", ".webp"),
        ("TIFF", "image/tiff", ".tif"),
    ],
)
def test_data_url_is_named_by_its_real_format(
    client: TestClient, scene: Scene, fmt: str, mime: str, suffix: str
):
    plate = Image.new("RGB", (64, 64), (90, 140, 200))
    job = run_job(client, QUICK | {"input_image_path": _data_url(plate, fmt, mime)})
    saved = Path(job["request"]["input_image_path"])
    assert saved.suffix == suffix and saved.parent == scene.tmp / "data" / "uploads"
    with Image.open(saved) as image:
        assert image.format == fmt


def test_exr_data_url_and_upload_by_magic_number(client: TestClient, scene: Scene):
    from api.common.media import encode_exr

    exr = encode_exr(np.full((64, 64), 0.5, dtype=np.float32), {})
    assert exr[:4] == bytes.fromhex("762f3101")
    url = "data:image/x-exr;base64," + base64.b64encode(exr).decode()
    job = run_job(client, QUICK | {"input_image_path": url})
    assert Path(job["request"]["input_image_path"]).suffix == ".exr"
    uploaded = client.post("/api/files", files={"file": ("plate.exr", exr)})
    assert uploaded.status_code == 201 and uploaded.json()["path"].endswith(".exr")


def test_upload_is_named_by_its_real_format(client: TestClient, scene: Scene):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="JPEG")
    uploaded = client.post("/api/files", files={"file": ("plate.png", buffer.getvalue())})
    assert uploaded.status_code == 201
    assert uploaded.json()["path"].endswith(".jpg")


# Messages that say how to fix a path ----------------------------------------------------


def test_outside_the_roots_names_the_roots_and_the_resolved_path(client: TestClient, scene: Scene):
    link = scene.show / "plates"
    os.symlink(scene.outside, link)
    response = client.post("/api/images", json=QUICK | {"input_image_path": f"{link}/sentinel.png"})
    assert response.status_code == 403
    message = response.json()["error"]["message"]
    assert f"'{link}/sentinel.png'" in message  # as sent
    assert f"is {scene.outside / 'sentinel.png'} on the server" in message  # as resolved
    assert f"allowed roots ({scene.show}, {scene.tmp / 'data'}; DD_ALLOWED_ROOTS)" in message


@pytest.mark.parametrize(
    ("value", "example"),
    [
        ("Z:\\show\\sh010\\plate.png", 'DD_PATH_MAP=\'{"Z:/show": "/mnt/show"}\''),
        ("Z:/show/sh010/plate.png", 'DD_PATH_MAP=\'{"Z:/show": "/mnt/show"}\''),
        (
            "\\\\fileserver\\projects\\plate.png",
            'DD_PATH_MAP=\'{"//fileserver/projects": "/mnt/projects"}\'',
        ),
        (
            "//fileserver/projects/plate.png",
            'DD_PATH_MAP=\'{"//fileserver/projects": "/mnt/projects"}\'',
        ),
    ],
)
def test_unmapped_windows_path_says_how_to_map_it(
    make_client, scene: Scene, value: str, example: str
):
    client = make_client(path_map={"Y:/other": str(scene.show)})  # maps another drive
    response = client.post("/api/images", json=QUICK | {"input_image_path": value})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "input_image_path"
    assert f"'{value}' is a Windows path and no DD_PATH_MAP entry maps it" in error["message"]
    assert example in error["message"]
    assert "\\\\" not in error["message"].replace(value, "")  # backslashes as typed, not doubled


def test_unc_share_mapping(make_client, scene: Scene):
    write_image(scene.show / "sh010" / "plate.png")
    client = make_client(path_map={"//fileserver/projects": str(scene.show)})
    body = QUICK | {
        "input_image_path": "\\\\FileServer\\Projects\\sh010\\plate.png",  # case as Windows
        "output_image_path": "//fileserver/projects/sh010/out.png",
    }
    image = run_job(client, body)["result"]["images"][0]
    assert image["path"] == "//fileserver/projects/sh010/out.png"
    assert (scene.show / "sh010" / "out.png").is_file()


def test_long_names_are_a_4xx_everywhere(client: TestClient, scene: Scene):
    name = "a" * 300 + ".png"
    assert client.get(f"/api/files/{'0' * 32}/{name}").status_code == 404
    long_path = "/".join(["d" * 200] * 30)
    for field in ("input_image_path", "output_image_path"):
        response = client.post("/api/images", json=QUICK | {field: f"{scene.show}/{long_path}.png"})
        assert response.status_code == 422 and response.json()["error"]["field"] == field
        assert "paths can have at most 4095" in response.json()["error"]["message"]
