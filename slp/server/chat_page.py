"""The chat page: `/chat`, and `/` for a browser (an Ollama client or curl at `/` still gets Ollama's
`Ollama is running`). One HTML file, one JS module, one CSS file and two vendored libraries (marked for
Markdown, DOMPurify to sanitise what it makes), all served from the package under /chat/static/: nothing
comes from a CDN, so the page works offline.

The page and its files hold no secrets and are answered without an API key (like /docs: the page must
load before it can ask for the key); every API call the page makes sends the key. Its Content-Security-
Policy allows only this origin, so neither a model's Markdown (an image URL) nor a library can reach
another host.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from slp.server.chat_files import STATIC_FILES
from slp.server.errors import APIError
from slp.server.route_table import lazy_handler

STATIC_DIR = Path(__file__).with_name("chat_static")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
_ollama_root = lazy_handler("slp.server.ollama", "root")


def wants_page(request: web.Request) -> bool:
    """A browser navigating asks for HTML; Ollama's clients, curl and probes ask for anything (or nothing)."""
    return "text/html" in request.headers.get("Accept", "")


async def chat_page(request: web.Request) -> web.Response:
    page = (STATIC_DIR / "index.html").read_bytes()  # 5 KB, read per request: an edited page needs no restart
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff", "Vary": "Accept"})


async def root(request: web.Request) -> web.StreamResponse:
    """GET / (and HEAD /): the page for a browser, Ollama's `Ollama is running` for everyone else."""
    if wants_page(request):
        return await chat_page(request)
    response = await _ollama_root(request)
    response.headers["Vary"] = "Accept"
    return response


async def static_file(request: web.Request) -> web.StreamResponse:
    """One of the page's files, by name only (no listing, no traversal). `no-cache`: the browser revalidates
    (ETag, a 304 on loopback), so a page and its script never come from two versions of slp."""
    name = request.match_info["filename"]
    if name not in STATIC_FILES:
        raise APIError(404, f"no file {name!r} in the chat page's static files", code="not_found")
    path, content_type = STATIC_FILES[name]
    return web.FileResponse(STATIC_DIR / path, headers={"Content-Type": content_type,
                                                        "Cache-Control": "no-cache",
                                                        "X-Content-Type-Options": "nosniff"})
