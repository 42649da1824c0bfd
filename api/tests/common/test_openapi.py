"""The OpenAPI spec says what the routes really answer; Swagger UI and ReDoc work offline."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from api.common.errors import ErrorResponse
from api.tests.conftest import image_request, run_job

# Every status each operation can answer (schemathesis checks the spec holds: test_fuzz).
STATUSES = {
    ("get", "/health"): {200, 500},
    ("get", "/api/models"): {200, 401, 500},
    ("post", "/api/files"): {201, 400, 401, 403, 413, 422, 500},
    ("get", "/api/files/{job_id}/{name}"): {200, 401, 404, 500},
    ("get", "/api/jobs"): {200, 401, 422, 500},
    ("get", "/api/jobs/{job_id}"): {200, 202, 401, 404, 422, 500},
    ("delete", "/api/jobs/{job_id}"): {200, 401, 404, 409, 500},
    ("get", "/api/jobs/{job_id}/events"): {200, 401, 404, 500},
    ("get", "/api/jobs/events"): {200, 401, 422, 500},
    ("post", "/api/jobs/{job_id}/rerun"): {200, 202, 400, 401, 403, 404, 409, 413, 422, 500},
    ("post", "/api/images"): {200, 202, 400, 401, 403, 413, 422, 500},
    ("post", "/api/images/rerun"): {200, 202, 400, 401, 403, 413, 422, 500},
    ("get", "/api/loras"): {200, 401, 500},
    ("post", "/api/videos"): {200, 202, 400, 401, 403, 413, 422, 500},
    ("post", "/api/texts"): {200, 202, 400, 401, 403, 413, 422, 500},
    ("post", "/api/agentic/sequences"): {200, 202, 400, 401, 403, 413, 422, 500},
    ("post", "/v1/chat/completions"): {200, 400, 401, 403, 413, 422, 500, 503},
    ("get", "/v1/models"): {200, 401, 500},
}
ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {
        (method, path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def test_each_route_documents_its_statuses_with_the_error_shape(client: TestClient):
    spec = client.get("/openapi.json").json()
    found = operations(spec)
    assert {key: {int(s) for s in op["responses"]} for key, op in found.items()} == STATUSES
    for key, operation in found.items():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR, (key, status)
    error = spec["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"type", "message", "field"}
    # FastAPI's own validation error shape is not what the handlers send: it is gone.
    assert "HTTPValidationError" not in client.get("/openapi.json").text


def test_error_answers_are_the_documented_model(client: TestClient, workspace: Path):
    job = run_job(client, image_request(workspace, "text_to_image", model="sd1.5"))
    answers = {
        ("post", "/api/images", 400): client.post(
            "/api/images", content=b"{", headers={"content-type": "application/json"}
        ),
        ("post", "/api/images", 403): client.post(
            "/api/images", json={"model": "sd1.5", "input_image_path": "/etc/passwd"}
        ),
        ("post", "/api/images", 422): client.post("/api/images", json={"model": "nope"}),
        ("post", "/api/files", 400): client.post(
            "/api/files", content=b"x", headers={"content-type": "multipart/form-data"}
        ),
        ("post", "/api/files", 422): client.post("/api/files", files={"file": ("a.txt", b"x")}),
        ("get", "/api/jobs", 422): client.get("/api/jobs?limit=0"),
        ("get", "/api/jobs/{job_id}", 404): client.get("/api/jobs/nope"),
        ("get", "/api/jobs/{job_id}", 422): client.get(f"/api/jobs/{job['id']}?wait=601"),
        ("delete", "/api/jobs/{job_id}", 409): client.delete(f"/api/jobs/{job['id']}"),
        ("get", "/api/jobs/{job_id}/events", 404): client.get("/api/jobs/nope/events"),
        ("get", "/api/files/{job_id}/{name}", 404): client.get(f"/api/files/{job['id']}/x.png"),
    }
    spec = operations(client.get("/openapi.json").json())
    for (method, path, status), response in answers.items():
        assert response.status_code == status, (method, path, response.text)
        assert str(status) in spec[(method, path)]["responses"]
        ErrorResponse.model_validate(response.json(), strict=True)
    assert answers[("post", "/api/files", 400)].json()["error"]["type"] == "bad_request"


def test_api_operations_carry_the_bearer_scheme(make_client):
    client = make_client(api_keys=["s3cret"])
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for (method, path), operation in operations(spec).items():
        if path.startswith(("/api/", "/v1/")):
            assert operation["security"] == [{"ApiKey": []}], (method, path)
        else:
            assert "security" not in operation, (method, path)
    # The scheme reads the header the way the server always has.
    for header in ("Basic s3cret", "s3cret", "Bearer", "Bearer s3cret2"):
        refused = client.get("/api/jobs", headers={"Authorization": header})
        assert refused.status_code == 401
        assert refused.json()["error"] == {
            "type": "unauthorized",
            "message": "missing or wrong API key: send 'Authorization: Bearer <key>'",
            "field": "Authorization",
        }
    for header in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret "):
        assert client.get("/api/jobs", headers={"Authorization": header}).status_code == 200


def test_docs_work_offline(client: TestClient):
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        assert "http://" not in html.text and "https://" not in html.text, page
        links = re.findall(r"""(?:src|href|url|spec-url)\s*[=:]\s*["']([^"']+)""", html.text)
        assert "/openapi.json" in links, page
        for link in links:
            assert link.startswith("/") and not link.startswith("//"), (page, link)
            served = client.get(link)
            assert served.status_code == 200, link
            assert len(served.content) > 1000 or link == "/openapi.json", link
    swagger = client.get("/docs").text
    assets = {
        "/docs/static/swagger-ui-bundle.js": "javascript",
        "/docs/static/swagger-ui.css": "text/css",
        "/docs/static/redoc.standalone.js": "javascript",
        "/docs/static/favicon.png": "image/png",
    }
    for asset, kind in assets.items():
        served = client.get(asset)
        assert served.status_code == 200 and kind in served.headers["content-type"], asset
    assert "/docs/static/swagger-ui-bundle.js" in swagger
    # Swagger UI 5 (OpenAPI 3.1, which FastAPI writes; Swagger UI 4 can't show it).
    bundle = client.get("/docs/static/swagger-ui-bundle.js").text
    assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle)
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
