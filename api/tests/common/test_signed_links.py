"""Signed download links: open without the API key until they expire; nothing else does."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from api.common.settings import SettingsError
from api.common.signing import SECRET_FILE
from api.main import create_app
from api.tests.conftest import app_state, image_request, run_job

KEY = {"Authorization": "Bearer s3cret"}


def keyed_job(client, workspace: Path, **extra) -> tuple[dict, str]:
    """A finished job (submitted with the key) and its output's signed link."""
    client.headers.update(KEY)
    job = run_job(client, image_request(workspace, "text_to_image", model="sd1.5", **extra))
    del client.headers["Authorization"]
    return job, job["result"]["images"][0]["url"]


def test_a_signed_link_opens_without_the_key(make_client, workspace: Path):
    client = make_client(api_keys=["s3cret"])
    job, link = keyed_job(client, workspace, output_image_path=str(workspace / "sh 010#1.png"))
    path, query = urlsplit(link).path, parse_qs(urlsplit(link).query)
    assert path == f"/api/files/{job['id']}/sh%20010%231.png"  # encoded: a browser opens it
    assert set(query) == {"expires", "sig"}
    served = client.get(link)
    assert served.status_code == 200, served.text
    assert served.content == (workspace / "sh 010#1.png").read_bytes()
    # Unsigned, the same file needs the key, as everything else does.
    assert client.get(path).status_code == 401
    assert client.get(path, headers=KEY).content == served.content
    assert client.get(f"/api/jobs/{job['id']}?{urlsplit(link).query}").status_code == 401


def test_altered_or_expired_links_are_refused(make_client, workspace: Path):
    client = make_client(api_keys=["s3cret"])
    job, link = keyed_job(client, workspace)
    other, _ = keyed_job(client, workspace, seed=8)
    path, query = link.split("?")
    expires, sig = (parse_qs(query)[name][0] for name in ("expires", "sig"))
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    cases = {
        f"{path}?expires={expires}&sig={flipped}": ("sig", "signature does not match"),
        f"{path}?expires={int(expires) + 1}&sig={sig}": ("sig", "signature does not match"),
        f"{path.replace(job['id'], other['id'])}?{query}": ("sig", "signature does not match"),
        f"{path}?expires={expires}": ("sig", "without 'sig'"),
        f"{path}?sig={sig}": ("expires", "without 'expires'"),
        f"{path}?expires=soon&sig={sig}": ("expires", "must be a unix time"),
    }
    links = app_state(client).links
    stale = links.sign(urlsplit(path).path, now=time.time() - links.expiry_seconds - 60)
    cases[stale] = ("expires", "this link expired at ")
    for url, (field, message) in cases.items():
        refused = client.get(url)
        assert refused.status_code == 401, url
        error = refused.json()["error"]
        assert error["type"] == "unauthorized" and error["field"] == field, url
        assert message in error["message"] and "GET /api/jobs/<id>" in error["message"], url
    assert client.get(stale, headers=KEY).status_code == 200  # the key opens any link


def test_links_are_signed_when_answered_not_stored(make_client, workspace: Path, tmp_path: Path):
    client = make_client(api_keys=["s3cret"], url_expiry_seconds=3600)
    before = int(time.time())
    job, link = keyed_job(client, workspace)
    client.headers.update(KEY)
    answers = [
        link,
        client.get(f"/api/jobs/{job['id']}").json()["result"]["images"][0]["url"],
        client.get(f"/api/jobs/{job['id']}?wait=1").json()["result"]["images"][0]["url"],
        client.get("/api/jobs").json()[0]["result"]["images"][0]["url"],
    ]
    events = client.get(f"/api/jobs/{job['id']}/events").text
    answers.append(events.split("event: result\ndata: ")[1].split('"url": "')[1].split('"')[0])
    del client.headers["Authorization"]
    for url in answers:
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        assert before + 3600 <= expires <= int(time.time()) + 3600  # DD_URL_EXPIRY_SECONDS
        assert client.get(url).status_code == 200, url
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as db:
        (stored,) = db.execute("SELECT result FROM jobs").fetchone()
    assert "sig=" not in stored and "expires=" not in stored


def test_the_secret_is_private_and_outlives_a_restart(make_client, workspace: Path, tmp_path):
    client = make_client(api_keys=["s3cret"])
    _, link = keyed_job(client, workspace)
    secret = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    first = secret.read_bytes()
    client.__exit__(None, None, None)

    restarted = make_client(api_keys=["s3cret"])  # the same data dir
    assert secret.read_bytes() == first
    assert restarted.get(link).status_code == 200
    secret.chmod(0o644)  # loosened by hand: made private again at start-up
    make_client(api_keys=["s3cret"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_without_keys_every_link_opens(client, workspace: Path):
    job = run_job(client, image_request(workspace, "text_to_image", model="sd1.5"))
    link = job["result"]["images"][0]["url"]
    assert "sig=" in link
    assert client.get(link).status_code == 200
    assert client.get(link.split("?")[0]).status_code == 200


def test_an_unusable_secret_stops_the_start(make_settings, tmp_path: Path):
    secret = tmp_path / "data" / SECRET_FILE
    secret.parent.mkdir(parents=True)
    secret.write_text("")
    with pytest.raises(SettingsError, match=f"{secret} holds no usable signing secret"):
        create_app(make_settings(), devices=["cpu"])
