"""Static files: our own CSS/JS from the package, front-end packages from ``node_modules``.

The vendor files (HTMX, ECharts) are installed from npm with a lock file and served from
``settings.node_modules`` so that they are never copied into the repository. Only the files
named in ``VENDOR`` are reachable, so nothing else under ``node_modules`` leaks out.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

OWN_STATIC = Path(__file__).parent / "static"

#: URL name under /static/vendor/ -> path inside node_modules
VENDOR = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "echarts.min.js": "echarts/dist/echarts.min.js",
}

_CACHE = {"Cache-Control": "public, max-age=3600"}


@router.get("/static/vendor/{name}")
def vendor(name: str, request: Request) -> FileResponse:
    relative = VENDOR.get(name)
    if relative is None:
        raise HTTPException(404, f"unknown vendor asset {name!r}; known: {', '.join(VENDOR)}")
    path = request.app.state.ws.settings.node_modules / relative
    if not path.is_file():
        raise HTTPException(
            404, f"{path} is missing: run `make assets` (npm ci) to install front-end packages"
        )
    return FileResponse(path, headers=_CACHE)


@router.get("/static/{name:path}")
def own(name: str) -> FileResponse:
    path = (OWN_STATIC / name).resolve()
    if not path.is_relative_to(OWN_STATIC.resolve()) or not path.is_file():
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path, headers=_CACHE)
