"""The Swagger UI files `/docs` serves: shared by the docs handlers and the route table that lists them
(its `filename` parameter, and so the document and the public paths), one layer below both."""

from __future__ import annotations

# Swagger UI's files the page uses, name -> Content-Type: served by name only (no listing, no traversal).
STATIC_FILES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
