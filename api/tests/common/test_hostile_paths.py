"""A corpus of hostile paths: every one refused at submit with the right status and field,
no job created, and nothing at all written or changed, inside the roots or out of them.

The allowed roots are ``<tmp>/show`` and ``<tmp>/data``; ``<tmp>/outside`` is a sentinel
folder beside them with files an attack would read or overwrite. Every case snapshots the
whole of ``<tmp>`` (every file, folder and link, with sizes and times) before and after.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.tests.conftest import write_image, write_mask

OK = {"model": "sd1.5", "prompt": "x", "num_inference_steps": 2, "max_width": 64, "max_height": 64}
SECRET = b"the contents of a file outside the roots\n"


@dataclass
class Scene:
    """The folders of a test: the allowed root, the sentinel folder outside, and more."""

    tmp: Path
    show: Path  # an allowed root
    outside: Path  # not an allowed root: nothing may change here

    @property
    def plate(self) -> str:
        return str(self.show / "plate.png")

    def link(self, name: str, target: Path) -> Path:
        path = self.show / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
        return path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: its kind, size, modification time and link target."""
    entries = {}
    for path in [folder, *folder.rglob("*")]:
        info = path.lstat()
        target = os.readlink(path) if path.is_symlink() else None
        entries[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns, target)
    return entries


@pytest.fixture
def scene(tmp_path: Path, workspace: Path) -> Scene:
    outside = tmp_path / "outside"
    write_image(outside / "sentinel.png")
    (outside / "secret.txt").write_bytes(SECRET)
    write_image(workspace / "plate.png")
    write_mask(workspace / "mask.png")
    write_image(tmp_path / "showX" / "plate.png")  # beside the root, sharing its prefix
    return Scene(tmp_path, workspace, outside)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="GIF")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG64 = _b64(_png())
LONG_PATH = "/".join(["d" * 100] * 60)  # 6059 characters under the root

# kind → (the hostile value, built in the test's folders; expected status)
Value = Callable[[Scene], str]
INPUTS: dict[str, tuple[Value, int]] = {
    "dotdot": (lambda s: f"{s.show}/../outside/sentinel.png", 403),
    "dotdot-deep": (lambda s: f"{s.show}/a/b/../../../outside/sentinel.png", 403),
    "dotdot-only": (lambda s: f"{s.show}/../../../../../../../../etc/passwd", 403),
    "encoded-dotdot": (lambda s: f"{s.show}/%2e%2e/outside/sentinel.png", 422),
    "encoded-slash": (lambda s: f"{s.show}%2F..%2Foutside%2Fsentinel.png", 422),
    "absolute-outside": (lambda s: "/etc/passwd", 403),
    "sentinel-by-path": (lambda s: str(s.outside / "sentinel.png"), 403),
    "proc": (lambda s: "/proc/self/environ", 403),
    "home-of-root": (lambda s: "~root/.bashrc", 403),
    "relative": (lambda s: "../outside/sentinel.png", 422),
    "link-to-outside": (lambda s: str(s.link("in.png", s.outside / "sentinel.png")), 403),
    "dangling-link": (lambda s: str(s.link("gone.png", s.outside / "missing.png")), 403),
    "link-as-folder": (lambda s: f"{s.link('linked', s.outside)}/sentinel.png", 403),
    "link-loop": (lambda s: str(s.link("loop.png", s.show / "loop.png")), 422),
    "prefix-confusion": (lambda s: f"{s.tmp}/showX/plate.png", 403),
    "windows-drive": (lambda s: "C:\\Windows\\win.ini", 422),
    "windows-forward": (lambda s: "Z:/show/plate.png", 422),
    "unc": (lambda s: "\\\\server\\share\\plate.png", 422),
    "backslash-dotdot": (lambda s: f"{s.show}\\..\\outside\\sentinel.png", 422),
    "nul": (lambda s: f"{s.plate}\x00.txt", 422),
    "long-name": (lambda s: f"{s.show}/{'a' * 300}.png", 422),
    "long-path": (lambda s: f"{s.show}/{LONG_PATH}/x.png", 422),
}
DATA_URLS: dict[str, tuple[Value, int]] = {
    "data-subtype-dotdot": (
        lambda s: f"data:image/../../../../outside/pwned;base64,{PNG64}",
        422,
    ),
    "data-subtype-slash": (lambda s: f"data:image/png/../../x;base64,{PNG64}", 422),
    "data-subtype-absolute": (
        lambda s: f"data:image//{s.outside}/pwned;base64,{PNG64}",
        422,
    ),
    "data-subtype-encoded": (lambda s: f"data:image/..%2f..%2fx;base64,{PNG64}", 422),
    "data-subtype-nul": (lambda s: f"data:image/png\x00/../x;base64,{PNG64}", 422),
    "data-svg": (lambda s: f"data:image/svg+xml;base64,{_b64(b'<svg onload=1/>')}", 422),
    "data-html-as-png": (lambda s: f"data:image/png;base64,{_b64(b'<html></html>')}", 422),
    "data-gif": (lambda s: f"data:image/gif;base64,{_b64(_gif())}", 422),
    "data-fake-exr": (lambda s: f"data:image/x-exr;base64,{_b64(b'v/1' + bytes(200))}", 422),
    "data-text-mime": (lambda s: f"data:text/html;base64,{PNG64}", 422),
    "data-not-base64": (lambda s: "data:image/png,\x89PNG", 422),
    "data-empty": (lambda s: "data:image/png;base64,", 422),
}
OUTPUTS: dict[str, tuple[Value, int]] = {
    "dotdot": (lambda s: f"{s.show}/../outside/out.png", 403),
    "dotdot-deep": (lambda s: f"{s.show}/renders/../../outside/out.png", 403),
    "absolute-outside": (lambda s: str(s.outside / "out.png"), 403),
    "overwrite-sentinel": (lambda s: str(s.outside / "sentinel.png"), 403),
    "system-folder": (lambda s: "/etc/cron.d/dd.png", 403),
    "encoded-dotdot": (lambda s: f"{s.show}/%2e%2e/outside/out.png", 422),
    "relative": (lambda s: "../outside/out.png", 422),
    "link-to-outside-file": (lambda s: str(s.link("out.png", s.outside / "sentinel.png")), 403),
    "dangling-link-outside": (lambda s: str(s.link("new.png", s.outside / "new.png")), 403),
    "link-as-folder": (lambda s: f"{s.link('renders', s.outside)}/out.png", 403),
    "link-as-deep-folder": (lambda s: f"{s.link('a/b', s.outside)}/c/d/out.png", 403),
    "take-folder-link": (lambda s: _take_link(s, s.outside), 403),
    "take-folder-dangling": (lambda s: _take_link(s, s.outside / "takes"), 403),
    "take-folder-loop": (lambda s: _take_link(s, s.show / "shot" / "tmp"), 422),
    "link-loop": (lambda s: str(s.link("loop.png", s.show / "loop.png")), 422),
    "prefix-confusion": (lambda s: f"{s.tmp}/showX/out.png", 403),
    "windows-drive": (lambda s: "C:\\renders\\out.png", 422),
    "unc": (lambda s: "\\\\server\\share\\out.png", 422),
    "backslash-dotdot": (lambda s: f"{s.show}/..\\outside\\out.png", 422),
    "nul": (lambda s: f"{s.show}/out.png\x00.png", 422),
    "long-name": (lambda s: f"{s.show}/{'a' * 300}.png", 422),
    "name-too-long-for-its-take": (lambda s: f"{s.show}/{'a' * 220}.png", 422),
    "long-path": (lambda s: f"{s.show}/{LONG_PATH}/out.png", 422),
}


def _take_link(scene: Scene, target: Path) -> str:
    """An output whose take folder (``tmp/`` beside it) is a link to ``target``."""
    scene.link("shot/tmp", target)
    return str(scene.show / "shot" / "out.png")


def _body(field: str, value: str, scene: Scene) -> dict:
    """A valid request but for ``field``, which holds ``value``."""
    by_field: dict[str, dict[str, Any]] = {
        "input_image_path": {"input_image_path": value},
        "input_mask_path": {"input_image_path": scene.plate, "input_mask_path": value},
        "controlnets.0.image_path": {"controlnets": [{"model": "canny", "image_path": value}]},
        "ip_adapters.0.image_path": {"ip_adapters": [{"model": "style", "image_path": value}]},
        "ip_adapters.0.mask_path": {
            "ip_adapters": [{"model": "style", "image_path": scene.plate, "mask_path": value}]
        },
        "output_image_path": {"output_image_path": value},
    }
    return OK | by_field[field]


def _cases() -> list:
    every_input = list(INPUTS)
    some_inputs = ["dotdot", "link-to-outside", "link-as-folder", "prefix-confusion", "nul"]
    per_field = {
        "input_image_path": [(k, *INPUTS[k]) for k in every_input]
        + [(k, *DATA_URLS[k]) for k in DATA_URLS],
        "input_mask_path": [(k, *INPUTS[k]) for k in [*some_inputs, "windows-drive"]]
        + [(k, *DATA_URLS[k]) for k in ["data-subtype-dotdot", "data-gif"]],
        "controlnets.0.image_path": [
            (k, *INPUTS[k]) for k in [*some_inputs, "dangling-link", "unc", "long-path"]
        ]
        + [(k, *DATA_URLS[k]) for k in ["data-subtype-dotdot", "data-subtype-slash"]],
        "ip_adapters.0.image_path": [
            (k, *INPUTS[k]) for k in [*some_inputs, "absolute-outside", "encoded-slash"]
        ]
        + [(k, *DATA_URLS[k]) for k in ["data-subtype-dotdot", "data-svg"]],
        "ip_adapters.0.mask_path": [
            (k, *INPUTS[k]) for k in [*some_inputs, "long-name", "windows-forward"]
        ]
        + [(k, *DATA_URLS[k]) for k in ["data-subtype-dotdot", "data-subtype-absolute"]],
        "output_image_path": [(k, *OUTPUTS[k]) for k in OUTPUTS],
    }
    return [
        pytest.param(field, value, status, id=f"{field}-{kind}")
        for field, cases in per_field.items()
        for kind, value, status in cases
    ]


CASES = _cases()


@pytest.mark.parametrize(("field", "value", "status"), CASES)
def test_hostile_path_is_refused(
    client: TestClient, scene: Scene, field: str, value: Value, status: int
):
    body = _body(field, value(scene), scene)
    before = snapshot(scene.tmp)
    response = client.post("/api/images?wait=5", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["type"] == ("forbidden" if status == 403 else "invalid_field")
    assert snapshot(scene.tmp) == before  # nothing written, created or touched anywhere
    assert client.get("/api/jobs").json() == []
    assert (scene.outside / "secret.txt").read_bytes() == SECRET


UPLOAD_NAMES = {
    "dotdot": "../../outside/pwned.png",
    "absolute": "/etc/cron.d/pwned.png",
    "windows": "C:\\Users\\artist\\plate.png",
    "unc": "\\\\server\\share\\plate.png",
    "long-name": "a" * 300 + ".png",
    "encoded": "..%2f..%2foutside%2fpwned.png",
}


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """The entries added, removed or modified between two snapshots."""
    return {path for path in set(before) | set(after) if before.get(path) != after.get(path)}


@pytest.mark.parametrize("kind", list(UPLOAD_NAMES))
def test_hostile_upload_name_is_ignored(client: TestClient, scene: Scene, kind: str):
    """An upload is saved under a name of the server's own in the upload folder: the
    client's file name (which a browser may send with its folders) is never used."""
    uploads = scene.tmp / "data" / "uploads"
    before = snapshot(scene.tmp)
    response = client.post("/api/files", files={"file": (UPLOAD_NAMES[kind], _png(), "image/png")})
    assert response.status_code == 201, response.text
    saved = Path(response.json()["path"])
    assert saved.parent == uploads and saved.suffix == ".png" and len(saved.stem) == 32
    assert saved.read_bytes() == _png()
    # Only the new file (and the folders holding it) changed, nothing anywhere else.
    assert changed(before, snapshot(scene.tmp)) <= {str(saved), str(uploads), str(uploads.parent)}
    assert client.get("/api/jobs").json() == []


UPLOAD_CONTENTS = {
    "html-named-png": ("page.png", b"<html><script>x</script></html>"),
    "gif-named-png": ("anim.png", _gif()),
    "svg": ("vector.svg", b"<svg/>"),
    "fake-exr": ("plate.exr", b"v/1\x01" + bytes(300)),
    "double-suffix": ("plate.png.sh", _png()),
    "no-name": ("", _png()),
}


@pytest.mark.parametrize("kind", list(UPLOAD_CONTENTS))
def test_hostile_upload_content_is_refused(client: TestClient, scene: Scene, kind: str):
    name, data = UPLOAD_CONTENTS[kind]
    uploads = scene.tmp / "data" / "uploads"
    before = snapshot(scene.tmp)
    response = client.post("/api/files", files={"file": (name, data, "image/png")})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "file"
    # At most the (empty) upload folder was made.
    assert changed(before, snapshot(scene.tmp)) <= {str(uploads), str(uploads.parent)}
    assert not uploads.exists() or not any(uploads.iterdir())
