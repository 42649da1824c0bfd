"""DD_PRELOAD: a runner imports the model libraries as the server starts, not in its first
job; checked in a fresh interpreter (this one has imported them long ago)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from api.tests.common.test_server_process import REPO

MODULES = (
    "api.images.models.diffusion",
    "api.videos.models.diffusion",
    "api.texts.models.qwen_vl",
    "diffusers",
)

SCRIPT = """
import json, sys, time
from fastapi.testclient import TestClient
from api.domains import Settings
from api.main import create_app

data_dir, models_dir, preload = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
settings = Settings(
    data_dir=data_dir, models_dir=models_dir, allow_downloads=False, preload=preload
)
with TestClient(create_app(settings, devices=["cpu"])) as client:
    warming = client.get("/health").json()["warming_up"]
    while client.get("/health").json()["warming_up"]:
        time.sleep(0.1)
    modules = [name for name in json.loads(sys.argv[4]) if name in sys.modules]
    print(json.dumps({"warming": warming, "imported": modules}))
"""


@pytest.mark.parametrize("preload", ["on", "off"])
def test_the_model_libraries_are_imported_before_the_first_job(
    tmp_path: Path, tiny_models: Path, preload: str
):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(tiny_models), preload]
        + [json.dumps(MODULES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    if preload == "on":
        # /health said the device was getting ready until the imports were done
        assert seen == {"warming": ["cpu"], "imported": list(MODULES)}
    else:  # nothing imported before a job needs it, nothing to wait for
        assert seen == {"warming": [], "imported": []}
