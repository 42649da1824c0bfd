"""The web page at /, in a real browser (Playwright driving Debian's Chromium, headless)
against real server processes on the tiny models. Each view's screenshot is saved under
the test's temp dir.

Skipped, saying why, where Playwright for Python or a Chromium is missing (.ci/run
installs both: ``apt-get install chromium``; ``playwright`` is in requirements-dev.txt).
DD_TEST_CHROMIUM names another Chromium binary.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.tests.common.test_server_process import QUICK, SLOW, Server
from api.tests.conftest import write_image
from api.tests.web.conftest import KEY

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (requirements-dev.txt)"
)
CHROMIUM = os.environ.get("DD_TEST_CHROMIUM") or shutil.which("chromium")
if not CHROMIUM:
    pytest.skip(
        "no Chromium to drive (apt-get install chromium, or set DD_TEST_CHROMIUM)",
        allow_module_level=True,
    )

WIDTH, HEIGHT = 1280, 800  # a laptop screen


class Console:
    """What the page said on its console (errors and warnings) and what it raised."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.problems.append(f"{message.type}: {message.text}")
                if message.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda error: self.problems.append(f"raised: {error}"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.console = Console(page)
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def open_page(page: Any, server: Server, view: str = "") -> None:
    page.goto(f"{server.url}/{view}")
    page.wait_for_selector("#connection:text('live')")


def job_ids(server: Server) -> list[str]:
    return [job["id"] for job in httpx.get(f"{server.url}/api/jobs?limit=1000").json()]


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'#jobs tr[data-id="{job_id}"]')


def test_a_job_submitted_from_the_page_shows_its_progress_and_its_picture(
    page: Any, page_server: Server, shots: Path
):
    open_page(page, page_server, "#submit/images")
    kinds = page.locator("#submit-kinds a").all_inner_texts()
    assert kinds == ["images", "videos", "texts", "agentic"]  # one form per domain
    page.select_option("#model-select", "sd1.5")
    page.fill('[data-path="prompt"]', "a lighthouse at dusk")
    page.fill('[data-path="num_inference_steps"]', "20")
    page.fill('[data-path="max_width"]', "64")
    page.fill('[data-path="max_height"]', "64")
    page.screenshot(path=shots / "submit.png", full_page=True)

    # Every value the detail's progress bar takes, from the job's first showing, is noted.
    page.evaluate(
        """() => {
            window.seenSteps = [];
            const note = () => {
                const bar = document.querySelector("#detail progress.bar");
                if (bar && bar.hasAttribute("value")) window.seenSteps.push(bar.value);
            };
            new MutationObserver(note).observe(document.querySelector("#detail"),
                {subtree: true, childList: true, attributes: true});
        }"""
    )
    page.click("#submit-button")
    page.wait_for_url("**/#jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#detail .status-succeeded")
    steps = page.evaluate("window.seenSteps")
    assert any(0 < step < 20 for step in steps), steps  # it moved while running
    assert steps == sorted(steps) and steps[-1] >= 20

    # The thumbnail is the PNG the server wrote, served at its (signed) link.
    job = httpx.get(f"{page_server.url}/api/jobs/{job_id}").json()
    assert job["request"]["prompt"] == "a lighthouse at dusk"
    thumb = page.locator("#detail img.thumb")
    thumb.wait_for()
    page.wait_for_function("document.querySelector('#detail img.thumb').naturalWidth > 0")
    assert thumb.evaluate("img => img.naturalWidth") == 64
    shown = page.evaluate(
        """async (url) => {
            const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
            return btoa(String.fromCharCode(...bytes));
        }""",
        thumb.get_attribute("src"),
    )
    assert base64.b64decode(shown) == Path(job["result"]["images"][0]["path"]).read_bytes()
    assert page.locator("#detail a:has(img.thumb)").get_attribute("target") == "_blank"
    assert row(page, job_id).locator(".status").inner_text() == "succeeded"
    assert '"prompt": "a lighthouse at dusk"' in page.inner_text("#detail .request-json")
    page.screenshot(path=shots / "jobs.png")

    # Submit again: the same request in the form, editable.
    page.click("#detail button.again")
    page.wait_for_url("**/#submit/images")
    assert page.input_value('[data-path="prompt"]') == "a lighthouse at dusk"
    assert page.input_value('[data-path="seed"]') == str(job["request"]["seed"])
    page.fill('[data-path="num_inference_steps"]', "2")
    page.click("#submit-button")
    page.wait_for_url("**/#jobs/*")
    again_id = page.url.rsplit("/", 1)[1]
    assert again_id != job_id
    page.wait_for_selector("#detail .status-succeeded")
    again = httpx.get(f"{page_server.url}/api/jobs/{again_id}").json()
    assert again["request"] | {"num_inference_steps": 20} == job["request"]
    assert page.console.problems == []


def test_a_refused_request_names_its_field_in_the_form(page: Any, page_server: Server):
    open_page(page, page_server, "#submit/images")
    page.select_option("#model-select", "sd1.5")
    page.fill('[data-path="input_image_path"]', "/nowhere/plate.png")
    before = job_ids(page_server)
    page.click("#submit-button")
    page.wait_for_selector("#submit-error:text('input_image_path')")
    assert "invalid" in page.get_attribute('[data-path="input_image_path"]', "class")
    assert job_ids(page_server) == before
    # A request only its own model takes: the form follows the model.
    page.select_option("#model-select", "depth-anything")
    assert page.locator('[data-path="depth_format"]').count() == 1
    assert page.locator('[data-path="num_inference_steps"]').count() == 0
    # As JSON, sent as written: a field no request has is refused, naming it.
    page.select_option("#model-select", "sd1.5")
    # Opening the box fills it with the form's request (a toggle event, after the click):
    # emptied first, so that its filling can be waited for before typing.
    page.eval_on_selector("#submit-json", "area => { area.value = ''; }")
    page.click("#submit-json-box summary")
    page.wait_for_function("document.querySelector('#submit-json').value !== ''")
    page.fill("#submit-json", json.dumps(QUICK | {"stength": 0.5}))
    page.click("#submit-button")
    page.wait_for_selector("#submit-error:text('stength')")
    assert job_ids(page_server) == before
    problems = [p for p in page.console.problems if "the server responded with a status" not in p]
    assert problems == []  # the refusals themselves are the only console lines


def test_cancel_from_the_page_and_filter_the_list(page: Any, page_server: Server, shots: Path):
    http = httpx.Client(base_url=page_server.url, timeout=60)
    done = http.post("/api/images?wait=60", json=QUICK | {"prompt": "a lighthouse"}).json()
    running = http.post("/api/images", json=SLOW | {"prompt": "storm over the harbour"}).json()
    queued = http.post("/api/images", json=QUICK | {"prompt": "the harbour at dawn"}).json()
    open_page(page, page_server, f"#jobs/{done['id']}")
    page.wait_for_function("document.querySelector('#detail img.thumb')?.naturalWidth > 0")
    page.wait_for_function(
        f"""document.querySelector('#jobs tr[data-id="{running["id"]}"] progress.bar').value >= 3"""
    )
    assert row(page, queued["id"]).locator(".queue-position").inner_text() == "1"
    page.screenshot(path=shots / "jobs-running.png")  # the README's (docs/web-page.png)

    # A job whose input is gone by the time it runs fails; its detail says why.
    plate = write_image(Path(json.loads(page_server.env["DD_ALLOWED_ROOTS"])[0]) / "gone.png")
    doomed = http.post("/api/images", json=QUICK | {"input_image_path": str(plate)}).json()
    plate.unlink()

    row(page, queued["id"]).get_by_role("button", name="Cancel").click()
    row(page, queued["id"]).locator(".status-cancelled").wait_for()
    row(page, running["id"]).get_by_role("button", name="Cancel").click()
    row(page, running["id"]).locator(".status-cancelled").wait_for()
    assert http.get(f"/api/jobs/{running['id']}").json()["status"] == "cancelled"
    never = http.get(f"/api/jobs/{queued['id']}").json()
    assert never["status"] == "cancelled" and never["started_at"] is None
    assert row(page, running["id"]).get_by_role("button", name="Cancel").count() == 0
    row(page, doomed["id"]).locator(".status-failed").wait_for()
    row(page, doomed["id"]).click()
    error = page.locator("#detail .job-error")
    assert error.inner_text().startswith("invalid_input: ")
    assert "input_image_path" in error.inner_text()

    page.select_option("#filter-status", "cancelled")
    page.wait_for_function(
        """() => {
            const rows = [...document.querySelectorAll('#jobs tbody tr')];
            return rows.length >= 2 && rows.every((row) => row.dataset.status === 'cancelled');
        }"""
    )
    page.select_option("#filter-status", "")
    page.select_option("#filter-kind", "videos")
    page.wait_for_selector("#no-jobs", state="visible")
    assert page.locator("#jobs tbody tr").count() == 0
    assert page.console.problems == []


def test_a_text_job_reads_as_text(page: Any, page_server: Server):
    http = httpx.Client(base_url=page_server.url, timeout=120)
    body = {
        "model": "qwen-2.5-vl",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "seed": 1,
    }
    job = http.post("/api/texts?wait=120", json=body).json()
    assert job["status"] == "succeeded", job
    open_page(page, page_server, f"#jobs/{job['id']}")
    page.wait_for_selector("#detail .status-succeeded")
    fields = page.locator("#detail dl.fields").first
    assert " ".join(job["result"]["response"].split()) in " ".join(fields.inner_text().split())
    assert "Name a colour." in page.inner_text("#detail")  # the conversation, readable
    page.click("#detail button.again")
    page.wait_for_url("**/#submit/texts")
    assert page.input_value('[data-path="messages.0.content"]') == "Name a colour."
    assert page.input_value('[data-path="messages.0.role"]') == "user"
    assert page.console.problems == []


def test_health_shows_devices_queue_models_and_the_tiny_weights_warning(
    page: Any, page_server: Server, shots: Path
):
    httpx.post(f"{page_server.url}/api/images?wait=60", json=QUICK)  # sd1.5 is loaded
    open_page(page, page_server, "#health")
    page.wait_for_selector("table.models")
    health = httpx.get(f"{page_server.url}/health").json()
    models = httpx.get(f"{page_server.url}/api/models").json()
    assert "TINY RANDOM WEIGHTS" in page.inner_text("#warning")
    assert page.locator("table.devices tbody tr td").first.inner_text() == "cpu"
    assert "queued" in page.inner_text(".queue-depth")
    names = page.locator("table.models tbody tr td:first-child").all_inner_texts()
    assert names == [model["name"] for model in models]
    assert "sd1.5 on cpu" in page.inner_text("#health")
    assert health["version"] in page.inner_text("#health")
    page.screenshot(path=shots / "health.png", full_page=True)
    assert page.console.problems == []


def test_with_api_keys_the_page_asks_for_one_and_sends_it(
    page: Any, keyed_server: Server, shots: Path
):
    page.goto(keyed_server.url)
    page.wait_for_selector("#key-dialog[open]")
    page.screenshot(path=shots / "key-prompt.png")
    assert page.get_attribute("#key-input", "type") == "password"
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    page.wait_for_selector("#key-error:text('refused')")
    page.fill("#key-input", KEY)
    page.click("#key-submit")
    page.wait_for_selector("#connection:text('live')")
    assert page.evaluate("Object.values(localStorage)") == [KEY]

    # Kept: a reload asks nothing, and jobs submitted from the page carry the key.
    page.reload()
    page.wait_for_selector("#connection:text('live')")
    assert not page.locator("#key-dialog").evaluate("dialog => dialog.open")
    page.goto(f"{keyed_server.url}/#submit/images")
    page.select_option("#model-select", "sd1.5")
    page.fill('[data-path="num_inference_steps"]', "2")
    page.fill('[data-path="max_width"]', "64")
    page.fill('[data-path="max_height"]', "64")
    page.click("#submit-button")
    page.wait_for_selector("#detail .status-succeeded")
    page.wait_for_function("document.querySelector('#detail img.thumb')?.naturalWidth > 0")
    assert httpx.get(f"{keyed_server.url}/api/jobs").status_code == 401  # nothing without it
    # Only the calls without a key or with the wrong one were refused.
    assert all("status of 401" in problem for problem in page.console.problems)


def test_an_uploaded_picture_makes_a_depth_map_and_a_video_plays(
    page: Any, page_server: Server, tmp_path: Path, shots: Path
):
    plate = write_image(tmp_path / "plate.png", (64, 48))
    open_page(page, page_server, "#submit/images")
    page.select_option("#model-select", "depth-anything")
    page.set_input_files('[data-path="input_image_path.upload"]', plate)
    page.wait_for_function(
        """document.querySelector('[data-path="input_image_path"]').value.startsWith('/')"""
    )
    uploaded = page.input_value('[data-path="input_image_path"]')
    assert Path(uploaded).read_bytes() == plate.read_bytes()  # the upload route's copy
    page.click("#submit-button")
    page.wait_for_url("**/#jobs/*")
    page.wait_for_selector("#detail .status-succeeded")
    page.wait_for_function("document.querySelector('#detail img.thumb')?.naturalWidth === 64")

    http = httpx.Client(base_url=page_server.url, timeout=300)
    body = {"model": "ltx-video", "prompt": "storm clouds", "num_frames": 9, "seed": 1}
    video = http.post("/api/videos?wait=300", json=body | {"num_inference_steps": 2}).json()
    assert video["status"] == "succeeded", video
    page.goto(f"{page_server.url}/#jobs/{video['id']}")
    page.wait_for_selector("#detail video[controls]")
    # Chromium decodes the mp4 (H.264): its metadata loads, the length is its frames'.
    page.wait_for_function("document.querySelector('#detail video').readyState >= 1")
    duration = page.locator("#detail video").evaluate("video => video.duration")
    frames, fps = video["result"]["video"]["frames"], video["result"]["video"]["fps"]
    assert duration == pytest.approx(frames / fps, abs=1 / fps)
    page.screenshot(path=shots / "video.png")
    assert page.console.problems == []
