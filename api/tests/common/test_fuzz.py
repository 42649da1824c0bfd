"""Schemathesis over the server's own /openapi.json, against a real ``python -m api serve``
on the tiny models: no 5xx, and every status, content type and body as documented.

Kept cheap for CI (about 320 requests): a few examples per operation and generation mode,
with API keys on and the valid key sent (the fuzzer's invalid cases also alter it), and the
image jobs it submits kept small; see ``cheap``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TypeGuard

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.tests.common.test_server_process import Server, free_port

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 20  # per operation and generation mode (valid, invalid)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Valid sizes, steps and batches are capped (name: (lowest valid, highest valid, cap)).
# Sizes under the tiny models' min_size (TINY_MIN_SIZE) are left as drawn: refused, 422.
CAPS = {
    "max_width": (16, 4096, 64),
    "max_height": (16, 4096, 64),
    "num_inference_steps": (1, 500, 2),
    "num_images": (1, 16, 2),
}
MAX_WAIT = 0.5  # seconds a valid ``wait`` is cut to
# The fields of an image request that name no file (generated paths never name one here):
# the first valid request for each family keeps only these, so that each surely runs.
WITHOUT_FILES = {
    "model",
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "max_width",
    "max_height",
    "optimize_low_vram",
    "num_images",
    "bit_depth",
}
JOB_MODELS = ["sd1.5", "sdxl", "sd3", "flux-schnell"]  # every tiny family, in turn
# The job list's event stream never ends by itself (a fuzzer's call would hang until its
# timeout): its answers are checked in tests/web/test_page.py instead.
ENDLESS = {"GET /api/jobs/events"}

pytestmark = pytest.mark.slow


def _number(value: object) -> TypeGuard[int | float]:
    """A JSON number (not a bool, which Python counts as an int)."""
    return type(value) in (int, float)


class Fuzzer:
    def __init__(self, url: str) -> None:
        self.schema = schemathesis.openapi.from_url(
            f"{url}/openapi.json", config=schemathesis.Config()
        )
        self.answers: Counter[str] = Counter()  # "<operation> <mode> <status>" → requests
        self.models_given = 0

    def cheap(self, case: schemathesis.Case, mode: schemathesis.GenerationMode) -> None:
        """Make the valid image requests real but cheap jobs. A generated model name is
        random text (refused before anything else is looked at), so each gets a tiny
        text→image model in turn (the first of each family without its file fields); sizes,
        steps and batches are capped and ``wait`` kept short.
        Invalid values are left as generated, so refusals are fuzzed as they come."""
        if case.operation.path == "/api/images" and isinstance(case.body, dict):
            if mode is schemathesis.GenerationMode.POSITIVE:
                case.body["model"] = JOB_MODELS[self.models_given % len(JOB_MODELS)]
                if self.models_given < len(JOB_MODELS):  # a first job of each family runs
                    case.body = {k: v for k, v in case.body.items() if k in WITHOUT_FILES}
                self.models_given += 1
                for name, (_, _, cap) in CAPS.items():  # absent: the model's (large) default
                    if case.body.get(name) is None and name != "num_images":  # (1 image)
                        case.body[name] = cap
            for name, (low, high, cap) in CAPS.items():
                value = case.body.get(name)
                if _number(value) and low <= value <= high:
                    case.body[name] = min(value, cap)
        wait = (case.query or {}).get("wait")
        if _number(wait) and 0 <= wait <= 600:
            case.query["wait"] = min(wait, MAX_WAIT)

    def run(self, operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # CI fails on the code, not on the draw
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def one(case: schemathesis.Case) -> None:
            self.cheap(case, mode)
            response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=60)
            self.answers[f"{operation.label} {mode.value} {response.status_code}"] += 1

        one()


def test_every_operation_answers_as_documented(tmp_path: Path, tiny_models: Path):
    env = os.environ | {
        "DD_PORT": str(free_port()),
        "DD_DATA_DIR": str(tmp_path / "data"),
        "DD_MODELS_DIR": str(tiny_models),
        "DD_ALLOWED_ROOTS": f'["{tmp_path / "data"}"]',
        "DD_API_KEYS": f'["{KEY}"]',
        "DD_DEVICE": "cpu",
        "DD_ALLOW_DOWNLOADS": "false",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("DD_PATH_MAP", "DD_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        fuzzer = Fuzzer(server.url)
        failures = []
        operations = []
        for result in fuzzer.schema.get_all_operations():
            if isinstance(result, Err):  # an operation of the spec it couldn't read
                raise result.err()
            if result.ok().label not in ENDLESS:
                operations.append(result.ok())
        for operation in operations:
            for mode in schemathesis.GenerationMode:
                try:
                    fuzzer.run(operation, mode)
                except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                    assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
                except Exception as exc:  # every operation runs; all failures are reported
                    failures.append(f"{operation.label} ({mode.value}):\n{exc}")
        assert not failures, "\n\n".join(failures)
        print(f"schemathesis sent {fuzzer.answers.total()} requests:", dict(fuzzer.answers))
        assert {answer.rsplit(" ", 2)[0] for answer in fuzzer.answers} == {
            operation.label for operation in operations
        }
        # The jobs it submitted end without a bug (internal_error) either.
        http = httpx.Client(base_url=server.url, headers=AUTH, timeout=120)
        jobs = http.get("/api/jobs", params={"limit": 1000}).json()
        assert {job["model"] for job in jobs} == set(JOB_MODELS)
        for job in jobs:
            job = http.get(f"/api/jobs/{job['id']}", params={"wait": 120}).json()
            assert job["status"] in ("succeeded", "failed"), job
            assert job["status"] == "succeeded" or job["error"]["type"] != "internal_error", job
    finally:
        server.stop()
