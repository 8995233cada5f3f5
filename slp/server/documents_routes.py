"""Handlers for a project's documents and their search, under /v1/projects/{project} (routed in `api`).

A document comes as a multipart upload (`file`, and optionally `source`: what identifies it, such as the
path it came from, so adding it again replaces it) or as JSON `{"path": ...}`, a file on this machine that
the agent reads itself. The path form is allowed only from a loopback client, and never for a path with
a hidden component (dot files and folders hold keys and tokens), since whoever may call the agent then
reads files with the agent's rights; with SLP_API_KEY set it also needs the key, like every route.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Optional

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from slp.projects.documents import DEFAULT_MAX_BYTES, DocumentIndex, index_of
from slp.projects.extract import DocumentRefused
from slp.projects.schema import Document, DocumentAdded, DocumentPath, SearchQuery
from slp.server import keys
from slp.server.errors import APIError
from slp.server.jsonbody import read_json_object
from slp.server.middleware import origin_allowed
from slp.server.projects_routes import call, store_of, validated
from slp.server.responses import DocumentDeleted, DocumentList, SearchResults

SOURCE_MAX = 4096


def _index(request: web.Request) -> DocumentIndex:
    return index_of(store_of(request))


def _max_bytes(request: web.Request) -> int:
    settings = request.app.get(keys.SETTINGS)  # absent where only the project routes are mounted
    return settings.max_document_bytes if settings is not None else DEFAULT_MAX_BYTES


def loopback(remote: Optional[str]) -> bool:
    """Whether a peer address (aiohttp's `request.remote`) is this machine's loopback."""
    try:
        return ipaddress.ip_address((remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


async def add_document(request: web.Request) -> tuple[DocumentAdded, int]:
    max_bytes = _max_bytes(request)
    await call(store_of(request).get, request.match_info["project"])  # a wrong project: 404 before any reading
    if request.content_type == "multipart/form-data":
        data, name, source = await _upload(request, max_bytes)
    else:
        spec = validated(DocumentPath, await read_json_object(request))
        if not loopback(request.remote):
            raise APIError(403, "a document given by path can be added only from this machine (loopback); "
                           "upload it as multipart/form-data instead", code="path_not_allowed", param="path")
        data, name, source = await call(read_local, spec.path, max_bytes)
    added = await call(_index(request).add, request.match_info["project"], data, name, source, max_bytes)
    return added, 200 if added.status == "unchanged" else 201


async def _upload(request: web.Request, max_bytes: int) -> tuple[bytes, str, Optional[str]]:
    """The `file` part (its bytes and file name) and the `source` part of a multipart body. A browser page
    may send a form to any site without a CORS check, so one from an origin not allowed is refused."""
    origin = request.headers.get("Origin")
    settings = request.app.get(keys.SETTINGS)
    if origin is not None and not origin_allowed(origin, settings.cors_origins if settings else ()):
        raise APIError(403, f"a request from the browser origin {origin!r} may not upload documents (list the "
                       "origin in SLP_CORS_ORIGINS)", code="origin_not_allowed")
    data: Optional[bytes] = None
    name, source = "document", None
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart bodies are not read")
            if part.name == "file":
                name = part.filename or name
                data = await _read_part(part, max_bytes)
                if len(data) > max_bytes:
                    raise APIError(413, f"{name} is over the {max_bytes:,}-byte limit for a document "
                                   "(SLP_MAX_DOCUMENT_BYTES)", code="document_too_large", param="file")
            elif part.name == "source":
                raw = await _read_part(part, SOURCE_MAX)
                if len(raw) > SOURCE_MAX:
                    raise APIError(400, f"source is longer than {SOURCE_MAX} bytes", code="invalid_value",
                                   param="source")
                source = raw.decode("utf-8", "replace").strip() or None
            else:
                await part.release()
    except (ValueError, KeyError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        # a malformed body: aiohttp's reader raises these (a bad boundary or header, an unknown encoding)
        raise APIError(400, f"not a readable multipart/form-data body: {exc}", code="invalid_multipart") from None
    if data is None:
        raise APIError(400, "a multipart upload needs a `file` part holding the document", code="invalid_multipart",
                       param="file")
    return data, name, source


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    """A part's bytes, read until they pass `limit` (then more than `limit` of them: the caller refuses)."""
    buf = bytearray()
    while len(buf) <= limit and (chunk := await part.read_chunk(1 << 16)):
        buf += chunk
    return bytes(buf)


def read_local(path: str, max_bytes: int) -> tuple[bytes, str, str]:
    """(bytes, file name, resolved path) of a file on this machine. Refuses (DocumentRefused) a relative
    path, one with a hidden component (before or after links are followed), a folder, a missing or
    unreadable file, one over `max_bytes`."""
    given = Path(path)
    if "\x00" in path:
        raise DocumentRefused("path holds a NUL character", code="path_unreadable", param="path")
    if not given.is_absolute():
        raise DocumentRefused(f"{path} is not an absolute path", code="path_unreadable", param="path")
    resolved = Path(os.path.realpath(given))
    for candidate in (given, resolved):
        if any(part.startswith(".") for part in candidate.parts[1:]):
            raise DocumentRefused(f"{path} is hidden (a dot file or folder): such paths are not read; upload the "
                                  "file instead", code="path_not_allowed", param="path")
    try:
        if resolved.is_dir():
            raise DocumentRefused(f"{path} is a folder; add its files (slp project add-doc walks folders)",
                                  code="path_unreadable", param="path")
        size = resolved.stat().st_size
        if size > max_bytes:
            raise DocumentRefused(f"{given.name} is {size:,} bytes, over the {max_bytes:,}-byte limit for a document "
                                  "(SLP_MAX_DOCUMENT_BYTES)", code="document_too_large", status=413, param="path")
        with open(resolved, "rb") as file:
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise DocumentRefused(f"{path} does not exist", code="path_unreadable", param="path") from None
    except PermissionError:
        raise DocumentRefused(f"cannot read {path}: permission denied", code="path_unreadable", param="path") from None
    except OSError as exc:
        raise DocumentRefused(f"cannot read {path}: {exc.strerror or exc}", code="path_unreadable",
                              param="path") from None
    if len(data) > max_bytes:  # it grew since the stat
        raise DocumentRefused(f"{given.name} is over the {max_bytes:,}-byte limit for a document", code="document_too_large",
                              status=413, param="path")
    return data, given.name, str(resolved)


async def list_documents(request: web.Request) -> DocumentList:
    return DocumentList(object="list", data=await call(_index(request).list, request.match_info["project"]))


async def get_document(request: web.Request) -> Document:
    return await call(_index(request).get, request.match_info["project"], request.match_info["document"])


async def delete_document(request: web.Request) -> DocumentDeleted:
    document = await call(_index(request).delete, request.match_info["project"], request.match_info["document"])
    return DocumentDeleted(id=document.id, object="project.document.deleted", deleted=True)


async def search(request: web.Request) -> SearchResults:
    spec = validated(SearchQuery, await read_json_object(request))
    hits = await call(_index(request).search, request.match_info["project"], spec.query, spec.top_k)
    return SearchResults(object="list", data=hits)
