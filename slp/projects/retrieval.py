"""How a chat in a project with documents is given them: which chunks, where in the prompt, how they are named.

The proxy searches the project's index for the last user message (slp.projects.documents, BM25), then
`pick` keeps the best chunks that fit the budget (a share of the context window, so the history and the
answer keep the rest), `with_documents` puts them after the system prompt, numbered and named, and
`citations` is what the reply carries in `annotations`. All pure: the search is the proxy's, in a thread.
"""

from __future__ import annotations

import json
from typing import Any

from slp.projects.schema import SearchHit
from slp.projects.shaping import text_of

CANDIDATES = 8  # chunks asked of the index per chat; the budget decides how many go in
HEADER = ("Excerpts from this project's documents that may help with the user's last message. Use them when "
          "they are relevant and name the document you used.")


def last_user_text(messages: Any) -> str:
    """The text of the last user message (what retrieval searches for); "" when there is none."""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return text_of(message.get("content"))
    return ""


def pick(hits: list[SearchHit], budget_tokens: int) -> list[SearchHit]:
    """The best hits whose estimated tokens fit `budget_tokens` together, in rank order (a chunk too large
    for what is left is passed over for a smaller one after it)."""
    chosen, left = [], budget_tokens
    for hit in hits:
        cost = hit.tokens + 16  # its heading and separators
        if cost <= left:
            chosen.append(hit)
            left -= cost
    return chosen


def _label(hit: SearchHit) -> str:
    return f"{hit.name}, page {hit.page}" if hit.page is not None else hit.name


def documents_text(hits: list[SearchHit]) -> str:
    """The system prompt's documents section: a header, then each excerpt under its name."""
    parts = [HEADER]
    for number, hit in enumerate(hits, start=1):
        parts.append(f"[{number}] {_label(hit)}\n{hit.text}")
    return "\n\n".join(parts)


def with_documents(shaped: dict, hits: list[SearchHit]) -> dict:
    """A new body whose first message is a system message ending with the excerpts (the project's prompt
    and the caller's system text, merged by shaping, stay first). `shaped` itself is not changed."""
    section = documents_text(hits)
    messages = list(shaped.get("messages") or [])
    first = messages[0] if messages and isinstance(messages[0], dict) else None
    if first is not None and first.get("role") == "system":
        content = first.get("content")
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": section}]
        else:
            content = f"{content}\n\n{section}" if content else section
        messages[0] = {**first, "content": content}
    else:
        messages.insert(0, {"role": "system", "content": section})
    return {**shaped, "messages": messages}


def citations(hits: list[SearchHit]) -> list[dict]:
    """OpenAI's `file_citation` annotations for the chunks a reply was given."""
    return [{"type": "file_citation", "file_citation": {"document": hit.document, "name": hit.name,
                                                       "start": hit.start, "end": hit.end}} for hit in hits]


def sources(hits: list[SearchHit]) -> list[dict]:
    """What a session's exchange records of the chunks its prompt was given."""
    return [{"chunk": hit.chunk, "document": hit.document, "name": hit.name, "start": hit.start, "end": hit.end,
             "page": hit.page, "score": hit.score} for hit in hits]


# ----------------------------------------------------------------------------- the reply names them

def annotate_reply(data: bytes, annotations: list[dict]) -> bytes:
    """A non-streamed chat completion (the engine's JSON) with `annotations` on each choice's message; the
    bytes as they were if they are not such a reply."""
    try:
        reply = json.loads(data)
    except ValueError:
        return data
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        return data
    for choice in reply["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message["annotations"] = [*(message.get("annotations") or []), *annotations]
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode()


class CitationsAtEnd:
    """Adds one chunk carrying the annotations to a chat stream, just before `data: [DONE]` (so a stream that
    fails midway names no sources). Its id, time and model are the stream's own, read once from its first
    event. Bytes that may be the start of the end marker are held until the next ones show."""

    DONE = b"data: [DONE]"

    def __init__(self, annotations: list[dict]):
        self.annotations = annotations
        self.head: dict = {}
        self.held = b""
        self.sent = False

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk if self.held else chunk
        self.held = b""
        if self.sent:
            return data
        if not self.head:
            self._read_head(data)
        at = data.find(self.DONE)
        if at >= 0:
            self.sent = True
            return data[:at] + self.event() + data[at:]
        for size in range(min(len(self.DONE) - 1, len(data)), 0, -1):
            if data.endswith(self.DONE[:size]):
                self.held = data[-size:]
                return data[:-size]
        return data

    def flush(self) -> bytes:
        data, self.held = self.held, b""
        return data

    def _read_head(self, data: bytes) -> None:
        start = data.find(b"data: {")
        end = data.find(b"\n\n", start)
        if start < 0 or end < 0:
            return
        try:
            first = json.loads(data[start + 6:end])
        except ValueError:
            return
        if isinstance(first, dict):
            self.head = {key: first[key] for key in ("id", "created", "model", "system_fingerprint") if key in first}

    def event(self) -> bytes:
        chunk = {**self.head, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"annotations": self.annotations}, "finish_reason": None}]}
        return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
