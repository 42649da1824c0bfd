"""Serves the web page: ``GET /`` and its static files under ``/web``.

The page and its scripts hold no data: everything it shows comes from the API, behind
the API keys (the page asks for one when the server wants it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC = Path(__file__).parent / "static"
PAGE_ASSETS = "/web"


# Browsers check with the server before using a copy (a 304 when unchanged), so an updated
# server never runs with the scripts of the last one.
REVALIDATE = {"Cache-Control": "no-cache"}


class PageFiles(StaticFiles):
    """The page's scripts and styles, revalidated on each use."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE)
        return response


def install_page(app: FastAPI) -> None:
    """The page at ``/``, its scripts and styles at ``/web``."""
    app.mount(PAGE_ASSETS, PageFiles(directory=STATIC), name="web")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=REVALIDATE)
