"""Serves the web page: ``GET /`` and its static files under ``/web``.

The page and its scripts hold no data: everything it shows comes from the API, behind
the API keys (the page asks for one when the server wants it).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGE_ASSETS = "/web"


def install_page(app: FastAPI) -> None:
    """The page at ``/``, its scripts and styles at ``/web``."""
    app.mount(PAGE_ASSETS, StaticFiles(directory=STATIC), name="web")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
