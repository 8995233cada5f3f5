"""A document's text: plain text, Markdown and source code as they are, HTML's text, a PDF's pages.

Everything here is pure and raises `DocumentRefused` (one line that says what is wrong and what to do) for
what cannot be indexed: a binary file, text that is not UTF-8, an encrypted or broken PDF, nothing to read.
`pypdf` is imported only when a PDF comes, so the agent and the CLI do not pay for it otherwise.

Offsets: for text, Markdown and code the text is the file's own characters (nothing is normalised), so
a chunk's start/end are character offsets into the file; for HTML and PDF they are offsets into the text
extracted here (a PDF's pages joined by a blank line), the only text those formats have.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Optional

from slp.projects.files import BOMS, SNIFF_BYTES, looks_binary
from slp.projects.errors import ProjectError

HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx", ".rst"})
CODE_SUFFIXES = frozenset("""
    .py .pyi .js .mjs .cjs .ts .tsx .jsx .c .h .cc .cpp .cxx .hpp .hh .cu .go .rs .java .kt .kts .scala .swift
    .m .mm .rb .php .pl .pm .lua .r .jl .sh .bash .zsh .fish .ps1 .sql .css .scss .less .vue .svelte .cs .fs
    .hs .ml .ex .exs .erl .clj .dart .zig .nim .toml .yaml .yml .json .ini .cfg .cmake .mk .proto .graphql
""".split())
MAX_CONTROL_SHARE = 0.05  # control characters allowed in text (a binary that happens to be valid UTF-8 has more)


class DocumentRefused(ProjectError):
    """A document that cannot be indexed; `code` says why, `status` is the HTTP status (400 unless set)."""

    code = "document_refused"
    status = 400


@dataclass(frozen=True)
class Extracted:
    """A document's text and its sections: (start, end, page) ranges of `text` that chunks never cross
    (a PDF's pages; one section for other formats, page None)."""

    format: str
    text: str
    sections: tuple[tuple[int, int, Optional[int]], ...]
    pages: Optional[int] = None


def format_of(name: str, data: bytes) -> str:
    """The format by content (a PDF's header) and then by the name's suffix: pdf, html, markdown, code, text."""
    suffix = PurePath(name).suffix.lower()
    if data[:5] == b"%PDF-" or suffix == ".pdf":
        return "pdf"
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in CODE_SUFFIXES:
        return "code"
    return "text"


def extract(data: bytes, name: str) -> Extracted:
    """The text of a document named `name` (its file name, for the format). Raises DocumentRefused."""
    if not data:
        raise DocumentRefused(f"{name} is empty", code="document_empty")
    kind = format_of(name, data)
    if kind == "pdf":
        return _pdf(data, name)
    text = decode_text(data, name)
    if kind == "html":
        text = html_text(text)
    if not text.strip():
        raise DocumentRefused(f"{name} has no text to index", code="document_empty")
    return Extracted(kind, text, ((0, len(text), None),))


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 (or UTF-16/32 with a byte order mark); anything else is refused as binary or not UTF-8."""
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), None)
    if encoding is None and looks_binary(data):
        raise DocumentRefused(f"{name} is a binary file, not text", code="document_binary", status=415)
    try:
        text = data.decode(encoding or "utf-8")
    except UnicodeDecodeError:
        raise DocumentRefused(f"{name} is not UTF-8 text (a binary file, or another encoding: convert it to "
                              "UTF-8)", code="document_binary", status=415) from None
    sample = text[:SNIFF_BYTES]
    controls = sum(1 for ch in sample if ch < " " and ch not in "\t\n\r\f\v")
    if sample and controls / len(sample) > MAX_CONTROL_SHARE:
        raise DocumentRefused(f"{name} is a binary file, not text", code="document_binary", status=415)
    return text


# ----------------------------------------------------------------------------- HTML

_BLOCKS = frozenset("""address article aside blockquote br dd details div dl dt fieldset figcaption figure footer
    form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table td th tr ul title""".split())
_SKIPPED = frozenset({"script", "style", "template", "svg", "head"})


class _TextOf(HTMLParser):
    """Visible text of a page: scripts, styles and the head (but its title) left out, a line break at
    every block element, runs of white space as one space (as a browser shows them; not inside <pre>)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping: list[str] = []
        self.pre = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIPPED and tag != "head":
            self.skipping.append(tag)
        elif tag == "title":
            self.in_title = True
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()
        if tag == "title":
            self.in_title = False
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping or not data:
            return
        if self.pre:
            self.parts.append(data)
            return
        words = " ".join(data.split())
        spaced = self.parts[-1][-1:] in (" ", "\n") if self.parts else True  # one space between runs, as shown
        lead = " " if data[0].isspace() and not spaced else ""
        tail = " " if data[-1].isspace() and words else ""
        self.parts.append(lead + words + tail)


def html_text(markup: str) -> str:
    parser = _TextOf()
    parser.feed(markup)
    parser.close()
    lines = (line.strip() for line in "".join(parser.parts).split("\n"))
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


# ----------------------------------------------------------------------------- PDF

def _pdf(data: bytes, name: str) -> Extracted:
    """Each page's text (pypdf), pages joined by a blank line; one section per page."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # encrypted only against changes: it opens without a password
            except Exception:  # noqa: BLE001 - a cipher pypdf cannot open without extra packages
                opened = 0
            if not opened:
                raise DocumentRefused(f"{name} is an encrypted PDF; decrypt it first (e.g. qpdf --decrypt "
                                      "--password=... in.pdf out.pdf)", code="pdf_encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on a damaged file; all mean the same
        raise DocumentRefused(f"{name} is not a readable PDF ({type(exc).__name__}: {exc})"[:500],
                              code="pdf_unreadable") from None
    parts, sections, offset = [], [], 0
    for number, page in enumerate(pages, start=1):
        page = page.strip()
        if parts:
            offset += 2  # the blank line between pages
        parts.append(page)
        if page:
            sections.append((offset, offset + len(page), number))
        offset += len(page)
    if not sections:
        raise DocumentRefused(f"{name} has no text to index (a scanned PDF needs OCR first)", code="document_empty")
    return Extracted("pdf", "\n\n".join(parts), tuple(sections), pages=len(pages))
