"""The API docs pages, /docs (Swagger UI) and /redoc (ReDoc), with their scripts and styles
served from the fastapi-offline wheel under /docs/assets instead of FastAPI's default public CDN:
the docs work offline, and no third-party script of a floating version runs in the origin that
holds the API key. The pages carry no inline script (Swagger UI starts from /static/docs.js),
so they pass the same `script-src 'self'` policy as the search page (headers.py)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS_PATH = "/docs/assets"
# fastapi-offline ships Swagger UI 5 and ReDoc 2, the versions FastAPI's own pages load.
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))

SWAGGER_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>mmsearch API</title>
  <link rel="icon" href="{DOCS_ASSETS_PATH}/favicon.png">
  <link rel="stylesheet" href="{DOCS_ASSETS_PATH}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{DOCS_ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""

REDOC_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>mmsearch API</title>
  <link rel="icon" href="{DOCS_ASSETS_PATH}/favicon.png">
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="{DOCS_ASSETS_PATH}/redoc.standalone.js"></script>
</body>
</html>
"""


def docs_routes() -> APIRouter:
    """/docs and /redoc (FastAPI's own are turned off: they load scripts from a CDN)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return HTMLResponse(SWAGGER_PAGE)

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return HTMLResponse(REDOC_PAGE)

    return router


def docs_assets() -> StaticFiles:
    """The Swagger UI and ReDoc files, to mount at DOCS_ASSETS_PATH."""
    return StaticFiles(directory=DOCS_ASSETS_DIR)
