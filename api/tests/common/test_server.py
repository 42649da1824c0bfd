"""Settings, API keys, the path map, /health, /api/models and the OpenAPI spec."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.common.paths import PathPolicy
from api.common.settings import SettingsError, load_settings
from api.domains import Settings
from api.tests.conftest import files_under, png_metadata, write_image

QUICK = {
    "model": "sd1.5",
    "prompt": "x",
    "num_inference_steps": 2,
    "max_width": 64,
    "max_height": 64,
}


def test_api_keys(make_client, tmp_path: Path):
    client = make_client(api_keys=["s3cret", "other"])
    denied = client.post("/api/images", json=QUICK)
    assert denied.status_code == 401
    assert denied.json()["error"]["field"] == "Authorization"
    wrong = client.get("/api/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.get("/api/models").status_code == 401
    assert client.get("/health").status_code == 200
    good = {"Authorization": "Bearer other"}
    assert client.get("/api/jobs", headers=good).json() == []  # the 401s queued nothing
    done = client.post("/api/images?wait=60", json=QUICK, headers=good)
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    unsigned = done.json()["result"]["images"][0]["url"].partition("?")[0]
    assert client.get(unsigned).status_code == 401
    assert client.get(unsigned, headers=good).status_code == 200


def test_path_map_both_ways(make_client, workspace: Path):
    client = make_client(path_map={"Z:/show": str(workspace)})
    write_image(workspace / "shots" / "plate.png")
    body = QUICK | {
        "input_image_path": "Z:\\show\\shots\\plate.png",
        "output_image_path": "z:/show/renders/out.png",
    }
    job = client.post("/api/images?wait=60", json=body).json()
    assert job["status"] == "succeeded", job["error"]
    [image] = job["result"]["images"]
    assert image["path"] == "Z:/show/renders/out.png"
    assert image["take_path"].startswith("Z:/show/renders/tmp/out_")
    assert (workspace / "renders" / "out.png").is_file()
    assert png_metadata(workspace / "renders" / "out.png")["input_image_path"] == (
        "Z:\\show\\shots\\plate.png"
    )
    assert client.get(image["url"]).content == (workspace / "renders" / "out.png").read_bytes()
    escape = client.post("/api/images", json=QUICK | {"output_image_path": "Z:/show/../x.png"})
    assert escape.status_code == 403


def test_path_policy_prefixes():
    policy = PathPolicy([Path("/mnt/show")], {"Z:/show": "/mnt/show", "Z:/show/lib": "/lib"})
    assert policy.to_server("Z:/show/a.png") == "/mnt/show/a.png"
    assert policy.to_server("Z:/show/lib/a.png") == "/lib/a.png"  # longest prefix wins
    assert policy.to_server("Z:/showreel/a.png") == "Z:/showreel/a.png"  # folder boundary
    assert policy.to_client("/mnt/show/a/b.png") == "Z:/show/a/b.png"
    assert policy.to_client("/mnt/showreel/b.png") == "/mnt/showreel/b.png"


def test_upload_maps_path_back(make_client, workspace: Path, tmp_path: Path):
    client = make_client(path_map={"P:/dd": str(tmp_path / "data")})
    data = write_image(workspace / "p.png").read_bytes()
    uploaded = client.post("/api/files", files={"file": ("p.png", data, "image/png")}).json()
    assert uploaded["path"].startswith("P:/dd/uploads/")
    job = client.post("/api/images?wait=60", json=QUICK | {"input_image_path": uploaded["path"]})
    assert job.json()["status"] == "succeeded"


def test_health_and_models(client: TestClient):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["version"]
    assert health["devices"] == [{"device": "cpu", "name": "cpu"}]
    assert health["queue"] == {"queued": 0, "running": 0}
    assert "TINY RANDOM WEIGHTS" in health["warning"]
    listed = client.get("/api/models").json()
    assert {m["domain"] for m in listed} == {"images", "videos", "texts", "agentic"}
    models = {m["name"]: m for m in listed if m["domain"] == "images"}
    assert set(models) == {
        "sd1.5",
        "sdxl",
        "sdxl-refiner",
        "RealVisXL",
        "Fluently-XL",
        "sd3",
        "sd3.5",
        "flux-schnell",
        "gpt-image-1",
        "sd-x4-upscaler",
        "depth-anything",
        "segment-anything",
    }
    refiner = models["sdxl-refiner"]
    assert refiner["modes"] == ["image_to_image", "inpainting"]
    assert refiner["weights"] == {
        "repo": "stabilityai/stable-diffusion-xl-refiner-1.0",
        "source": "models_dir",
        "present": True,
        "tiny": True,
        "extra": None,  # other weights it runs with: none
    }
    assert models["flux-schnell"]["defaults"]["num_inference_steps"] == 4
    assert all(m["loaded_on"] == [] for m in models.values())
    client.post("/api/images?wait=60", json=QUICK)
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["sd1.5"]["loaded_on"] == ["cpu"]


def test_weights_removed_after_submit_fail_the_job(make_settings, tiny_models, tmp_path: Path):
    """The submit-time check passed, then the weights went: the job fails, saying how to
    provide them (the fallback behind the 422 at submit)."""
    from api.main import create_app

    models = tmp_path / "models"
    models.mkdir()
    (models / "sdxl").symlink_to(tiny_models / "sdxl")
    client = TestClient(create_app(make_settings(models_dir=models), devices=["cpu"]))
    queued = client.post("/api/images", json=QUICK | {"model": "sdxl"})  # no runner yet
    assert queued.status_code == 202, queued.text
    (models / "sdxl").unlink()
    with client:  # the runners start
        job = client.get(f"/api/jobs/{queued.json()['id']}?wait=60").json()
    assert job["status"] == "failed"
    assert job["error"]["type"] == "model_unavailable"
    assert str(models / "sdxl") in job["error"]["message"]
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in job["error"]["message"]
    assert files_under(tmp_path / "data" / "outputs") == []


def test_openapi(client: TestClient):
    spec = client.get("/openapi.json").json()
    operations = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {
        "images_create",
        "jobs_get",
        "jobs_list",
        "jobs_events",
        "jobs_cancel",
        "models_list",
        "files_upload",
        "files_get",
        "health",
    } <= operations
    assert client.get("/docs").status_code == 200


def test_openapi_command_prints_the_spec():
    out = subprocess.run(
        [sys.executable, "-m", "api", "openapi"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[3],
    ).stdout
    spec = json.loads(out)
    assert spec["paths"]["/api/images"]["post"]["operationId"] == "images_create"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DD_PORT": "not-a-port"}, "DD_PORT"),
        ({"DD_PATH_MAP": "[not json"}, "DD_PATH_MAP"),
        ({"DD_DEVICE": "tpu"}, "DD_DEVICE"),
        ({"DD_HOST": "0.0.0.0"}, "DD_API_KEYS"),
        ({"DD_PATH_MAP": '{"Z:/show": "relative/path"}'}, "DD_PATH_MAP"),
    ],
)
def test_bad_settings_fail_at_start_up(monkeypatch, tmp_path: Path, env: dict, needle: str):
    monkeypatch.setenv("DD_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings(Settings)


def test_serve_refuses_open_bind_without_keys(tmp_path: Path):
    import os

    env = os.environ | {"DD_HOST": "0.0.0.0", "DD_DATA_DIR": str(tmp_path / "d")}
    env.pop("DD_API_KEYS", None)
    env.pop("DD_ALLOW_NO_AUTH", None)
    done = subprocess.run(
        [sys.executable, "-m", "api", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 2
    assert "DD_API_KEYS" in done.stderr and "DD_ALLOW_NO_AUTH" in done.stderr


def test_open_bind_allowed_with_keys_or_opt_in(tmp_path: Path):
    assert Settings(host="0.0.0.0", api_keys=["k"], data_dir=tmp_path).host == "0.0.0.0"
    assert Settings(host="0.0.0.0", allow_no_auth=True, data_dir=tmp_path).allow_no_auth
    assert Settings(host="::1", data_dir=tmp_path).host == "::1"


def test_weights_from_the_hugging_face_cache(make_client, tiny_models: Path, tmp_path, monkeypatch):
    """No DD_MODELS_DIR copy: the weights are found in the Hugging Face cache layout."""
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    shutil.copytree(tiny_models / "sd1.5", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    empty = tmp_path / "no-models"
    empty.mkdir()
    client = make_client(models_dir=empty)
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["sd1.5"]["weights"]["source"] == "hf_cache"
    assert models["sd1.5"]["weights"]["present"] is True
    assert models["sdxl"]["weights"]["present"] is False
    job = client.post("/api/images?wait=60", json=QUICK).json()
    assert job["status"] == "succeeded", job["error"]


def test_warm_up_loads_models_before_the_first_job(make_client):
    client = make_client(warmup=["sd1.5", "sdxl-refiner"])
    deadline = time.monotonic() + 60
    while client.get("/health").json()["warming_up"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["sd1.5"]["loaded_on"] == ["cpu"]
    assert models["sdxl-refiner"]["loaded_on"] == ["cpu"]
    assert client.get("/api/jobs").json() == []  # no job was made for it
    assert client.post("/api/images?wait=60", json=QUICK).json()["status"] == "succeeded"


def test_warm_up_names_diffusion_models_only(make_settings):
    from api.main import create_app

    with pytest.raises(SettingsError, match="DD_WARMUP: depth-anything, sd9"):
        create_app(make_settings(warmup=["sd1.5", "depth-anything", "sd9"]), devices=["cpu"])


def test_importing_the_server_loads_no_model_library():
    code = (
        "import sys, api.main; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'openai', 'cv2', "
        "'OpenEXR') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[3],
    ).stdout
    assert out.strip() == "[]"
