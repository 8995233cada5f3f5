"""GET /docs (Swagger UI 5, served from the installed `swagger-ui-bundle-v2`) and its files; the document it
shows, /openapi.json, is made from the route table (`slp.server.api`), which also routes these.

Swagger UI's files come from the Python package, under /docs/static/, never from a CDN, so the
docs work offline; only the files the page uses are served, by name. The page, its files and the
document are answered without an API key (they hold no secrets, and the page must load before a user
can press Authorize); everything else keeps the agent's Host check and key. "Try it out" calls the
agent the page came from (`servers: [{"url": "/"}]`).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from slp.server.docs_files import STATIC_FILES
from slp.server.errors import APIError

STATIC_DIR = Path(str(swagger_ui_path))

# Relative URLs: the page lives at /docs, so "docs/static/x" is /docs/static/x, also behind a path prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>slp agent API</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/static/favicon-32x32.png" sizes="32x32">
  <style>body { margin: 0; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js" charset="utf-8"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      validatorUrl: null,
      displayRequestDuration: true,
      defaultModelsExpandDepth: 0,
      persistAuthorization: false
    });
  </script>
</body>
</html>
"""


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    """One of Swagger UI's files, by name only (no listing, no traversal)."""
    name = request.match_info["filename"]
    if name not in STATIC_FILES:
        raise APIError(404, f"no file {name!r} in the docs' static files", code="not_found")
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": STATIC_FILES[name],
                                                         "Cache-Control": "public, max-age=3600"})
