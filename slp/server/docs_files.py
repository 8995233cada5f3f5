"""The Swagger UI files `/docs` serves: shared by the docs routes and the OpenAPI document that lists them
(one layer below both, so neither imports the other at module level)."""

from __future__ import annotations

# Swagger UI's files the page uses, name -> Content-Type: served by name only (no listing, no traversal).
STATIC_FILES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
