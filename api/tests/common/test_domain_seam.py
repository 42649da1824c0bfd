"""The domain seam: api/common names no domain, and the engine runs any domain's jobs (a
test domain here, with a handler of its own and no model library)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api.common.domain import Domain, ModelInfo, WeightsInfo
from api.common.errors import JobFailure
from api.common.jobs.router import WaitSeconds, job_response
from api.common.jobs.runner import JobContext
from api.common.jobs.schemas import Job, job_model
from api.common.schemas import Name, RequestModel
from api.common.services import Services
from api.main import create_app
from api.tests.contract import DomainContract

COMMON = Path(__file__).parents[2] / "common"
KINDS = ("images", "videos", "texts", "agentic")
ROUTE = re.compile(rf"(^|/)({'|'.join(KINDS)})(/|$)")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(id(value))
    return found


def domain_names_in(path: Path) -> list[str]:
    """Identifiers, imports and route-like strings of ``path`` that name a domain."""
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            names = [node.name]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = node.module.split(".")
        elif isinstance(node, ast.Import):
            names = [part for alias in node.names for part in alias.name.split(".")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and (node.value in KINDS or ROUTE.search(node.value)):
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        for name in names:
            if set(name.lower().split("_")) & set(KINDS):
                found.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {name}")
    return found


def test_common_names_no_domain():
    files = sorted(COMMON.rglob("*.py"))
    assert files
    assert [hit for path in files for hit in domain_names_in(path)] == []


def test_the_check_sees_a_domain_name(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""About images."""\nfrom api.images import service\nurl = "/api/videos/x"\n'
        "def run_texts(): return 'agentic'\n"
    )
    assert len(domain_names_in(sample)) == 4  # the import, the route, the def, the string


# --- A domain of the test's own: counts to a number, one step per count ----------------


class CountRequest(RequestModel):
    model: Name
    to: int = 3


class CountResult(BaseModel):
    counted: int


CountJob = job_model("counts", "CountJob", CountRequest, CountResult)


class CountModelInfo(ModelInfo):
    pass


def count(services: Services, job: Job, context: JobContext) -> CountResult:
    request = CountRequest.model_validate(job.request)
    if request.model == "broken":
        raise JobFailure("this counter is broken", type="broken_counter")
    for step in range(request.to):
        time.sleep(0.05)  # a step of work
        context.progress(step + 1, request.to)
    return CountResult(counted=request.to)


def describe(services: Services) -> list[ModelInfo]:
    weights = WeightsInfo(repo="none", source=None, present=True, tiny=False)
    return [
        CountModelInfo(
            name="counter",
            domain="counts",
            family="counter",
            modes=["count"],
            external=False,
            available=True,
            reason=None,
            defaults={"to": 3},
            weights=weights,
            loaded_on=[],
        )
    ]


router = APIRouter()


@router.post("/counts", response_model=CountJob, status_code=202)
async def submit(
    body: CountRequest, request: Request, response: Response, wait: WaitSeconds = 0
) -> dict[str, Any]:
    engine = request.app.state.engine
    job = engine.submit("counts", body.model, body.model_dump())
    return await job_response(request, job, wait, response)


COUNTS = Domain(
    kind="counts",
    router=router,
    job=CountJob,
    model_info=CountModelInfo,
    describe_models=describe,
    run_job=count,
    output_files=lambda result: [],
)


@pytest.fixture
def counts(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(), devices=["cpu"], domains=[COUNTS])) as client:
        yield client


class TestCountsKeepTheContract(DomainContract):
    """The contract every domain's tests inherit, kept by a domain of no model at all."""

    kind = "counts"
    writes_files = False

    @pytest.fixture
    def client(self, counts: TestClient) -> TestClient:
        return counts

    def quick(self, workspace: Path) -> dict[str, Any]:
        return {"model": "counter", "to": 2}

    def slow(self, workspace: Path) -> dict[str, Any]:
        return {"model": "counter", "to": 200}

    def refused(self, workspace: Path) -> tuple[dict[str, Any], int, str]:
        return {"model": "counter", "to": "many"}, 422, "to"


def test_the_engine_runs_a_domain_it_was_given(counts: TestClient):
    job = counts.post("/api/counts?wait=10", json={"model": "counter", "to": 4}).json()
    assert job["status"] == "succeeded" and job["kind"] == "counts"
    assert job["result"] == {"counted": 4} and job["progress"] == {"step": 4, "total": 4}
    assert [j["id"] for j in counts.get("/api/jobs?kind=counts").json()] == [job["id"]]
    assert counts.get("/api/jobs?kind=images").status_code == 422  # not a domain here
    assert [m["name"] for m in counts.get("/api/models").json()] == ["counter"]
    assert counts.post("/api/images", json={"model": "sd1.5"}).status_code == 404
    failed = counts.post("/api/counts?wait=10", json={"model": "broken"}).json()
    assert failed["error"] == {"type": "broken_counter", "message": "this counter is broken"}


def test_the_engine_imports_no_model_library(make_settings, tmp_path: Path):
    """Jobs of a domain without models run without torch or diffusers being imported."""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parents[3])!r})
from fastapi.testclient import TestClient
from api.domains import Settings
from api.main import create_app
from api.tests.contract import DomainContract
from api.tests.common.test_domain_seam import COUNTS
settings = Settings(data_dir={str(tmp_path / "data")!r}, allowed_roots=[{str(tmp_path)!r}])
with TestClient(create_app(settings, devices=["cpu"], domains=[COUNTS])) as client:
    job = client.post("/api/counts?wait=10", json={{"model": "counter"}}).json()
    assert job["status"] == "succeeded", job
print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
