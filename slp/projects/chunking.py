"""Cutting a document's text into overlapping chunks, and a search question into full-text query terms.

Chunks are sized in tokens, estimated from the text's length (`estimate_tokens`): adding a document must
not need a running engine, and asking the engine's tokenizer for every chunk of a 1,000-page book would
cost more than all the rest of the indexing. The estimate is one token per CHARS_PER_TOKEN characters,
what SmolLM2's and Llama's BPE tokenizers give for English prose (code and other languages take more
tokens per character; the chat's retrieval budget is a share of the context, which leaves room for that).

A chunk ends at the best break before its size (a blank line, else a line end, else a sentence end, else
a space), and the next one starts OVERLAP_TOKENS before that end, at a word's start, so a fact cut in two
is whole in one of them. Chunks never cross a section (a PDF's page).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from slp.projects.extract import Extracted

CHARS_PER_TOKEN = 4
CHUNK_TOKENS = 192
OVERLAP_TOKENS = 32
MAX_QUERY_TERMS = 32


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int  # offsets into the document's text (see slp.projects.extract)
    end: int
    page: Optional[int]
    text: str
    tokens: int


def estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def _break_before(text: str, low: int, high: int) -> int:
    """Where to end a chunk that may end anywhere in text[low:high]: after the last blank line, line end,
    sentence end or space there; `high` if there is none."""
    for mark in ("\n\n", "\n", ". ", "? ", "! ", " "):
        found = text.rfind(mark, low, high)
        if found >= 0:
            return found + len(mark)
    return high


def chunk_text(doc: Extracted, chunk_tokens: int = CHUNK_TOKENS, overlap_tokens: int = OVERLAP_TOKENS) -> list[Chunk]:
    """The chunks of a document, in order; whitespace-only stretches make none."""
    size, overlap = chunk_tokens * CHARS_PER_TOKEN, overlap_tokens * CHARS_PER_TOKEN
    text, chunks = doc.text, []
    for start, end, page in doc.sections:
        pos = start
        while pos < end:
            cut = end if end - pos <= size else _break_before(text, pos + size // 2, pos + size)
            left, right = pos, cut
            while left < right and text[left].isspace():
                left += 1
            while right > left and text[right - 1].isspace():
                right -= 1
            if right > left:
                piece = text[left:right]
                chunks.append(Chunk(left, right, page, piece, estimate_tokens(piece)))
            if cut >= end:
                break
            nxt = max(cut - overlap, pos + 1)
            space = text.find(" ", nxt, cut)  # start the overlap at a word
            pos = space + 1 if space >= 0 else cut
    return chunks


# ----------------------------------------------------------------------------- queries

_WORD = re.compile(r"\w+")
STOPWORDS = frozenset("""
    a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
    now of off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself yourselves
    tell please say give know find
""".split())


def query_terms(question: str) -> list[str]:
    """The words of a question worth searching for: stop words left out (unless nothing else is left),
    each once, at most MAX_QUERY_TERMS."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(question)))
    kept = [w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]
    return (kept or words)[:MAX_QUERY_TERMS]


def fts_query(terms: list[str]) -> str:
    """An FTS5 query matching any of `terms` (each quoted: `\\w+` words hold no quote, so none escapes)."""
    return " OR ".join(f'"{term}"' for term in terms)
