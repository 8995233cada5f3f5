"""The files the chat page (`/`, `/chat`) loads, by name: shared by its handlers and the route table (the
`filename` parameter's values, and so the document and the public paths), one layer below both."""

from __future__ import annotations

# name under /chat/static/ -> (path under slp/server/chat_static/, Content-Type). Served by name only: no
# listing, no traversal; the vendored libraries keep their npm file names (vendor/manifest.json).
STATIC_FILES = {
    "chat.js": ("chat.js", "text/javascript"),
    "chat.css": ("chat.css", "text/css"),
    "marked.esm.js": ("vendor/marked.esm.js", "text/javascript"),
    "purify.min.js": ("vendor/purify.min.js", "text/javascript"),
}
