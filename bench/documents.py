"""`python -m bench.documents`: what a project's documents cost (issue #24). Writes bench/results/documents.md.

1. Adding: 1,000 pages of text (about 3,000 characters a page, one document) into a fresh project database:
   tokens/s of extraction + chunking alone, and of the whole add (chunking and the FTS5 index, one
   transaction). Also a 100-page PDF (pypdf's extraction is the cost there), pages/s.
2. Search: a project of 50,000 chunks; p50 and p99 of `DocumentIndex.search_id` (what a chat calls) over
   questions of 3-8 words drawn from the text's own vocabulary, rare and common words alike. Goal: p50 ≤ 5 ms.
3. A chat's first token: one agent over the real engine, two projects, one with the 1,000 pages (and
   retrieval on), one without documents. The project without documents is sent the very messages the
   other one's retrieval makes (built by the same code from the same search), so the engine does the same
   work for both; the requests take turns, streamed, one token each, after one untimed request has put
   the prompt in the engine's cache (so neither side pays for evaluating it). What retrieval adds is the
   difference of the medians of time to first token. Goal: ≤ 10 ms.

The text is made up, deterministically: words from a Zipf-like draw over a made-up vocabulary, so common
words are in most chunks and rare ones in few, as in real prose. Token counts are slp's estimate (about
4 characters a token, see slp.projects.chunking).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 24


# ----------------------------------------------------------------------------- made-up text

class Words:
    """A vocabulary with Zipf-like frequencies, and a seeded draw over it: as in real prose, the most frequent
    words are English stop words (in rank order), the rest made up."""

    def __init__(self, size: int = 20000, seed: int = SEED):
        from slp.projects.chunking import STOPWORDS

        self.random = random.Random(seed)
        syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "do", "fa", "gu", "ho", "ji", "pe", "qua",
                     "ri", "su", "te", "wo", "xe", "zu", "ar", "el", "in", "on", "um"]
        words: list[str] = sorted(STOPWORDS, key=lambda w: (len(w), w))  # short ones most frequent
        seen = set(words)
        while len(words) < size:
            word = "".join(self.random.choice(syllables) for _ in range(self.random.randint(2, 4)))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        self.cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(size)))

        self.sentences = [self.sentence() for _ in range(20000)]  # drawn from, so pages come fast

    def sentence(self) -> str:
        picked = self.random.choices(self.words, cum_weights=self.cumulative, k=self.random.randint(6, 18))
        return " ".join(picked).capitalize() + "."

    def page(self, chars: int = 3000) -> str:
        parts, size = [], 0
        while size < chars:
            paragraph = " ".join(self.random.choices(self.sentences, k=self.random.randint(3, 7)))
            parts.append(paragraph)
            size += len(paragraph) + 2
        return "\n\n".join(parts)

    def question(self) -> str:
        return " ".join(self.random.choices(self.words, cum_weights=self.cumulative,
                                            k=self.random.randint(3, 8))) + "?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- 1. adding

def bench_add(folder: Path, pages: int, pdf_pages: int) -> dict:
    from slp.projects import ProjectStore
    from slp.projects.chunking import chunk_text
    from slp.projects.documents import DocumentIndex
    from slp.projects.extract import extract

    words = Words()
    text = "\f".join(words.page() for _ in range(pages))  # a form feed between pages, as text exports have
    data = text.encode()
    started = time.perf_counter()
    chunks = chunk_text(extract(data, "book.txt"))
    chunking_s = time.perf_counter() - started
    tokens = sum(c.tokens for c in chunks)
    with ProjectStore(folder / "add.db") as store:
        store.create({"name": "book"})
        index = DocumentIndex(store)
        started = time.perf_counter()
        added = index.add("book", data, "book.txt", max_bytes=len(data))
        add_s = time.perf_counter() - started
    pdf = make_pdf([words.page(1800) for _ in range(pdf_pages)])
    started = time.perf_counter()
    extracted = extract(pdf, "book.pdf")
    pdf_s = time.perf_counter() - started
    return {"pages": pages, "bytes": len(data), "chunks": added.document.chunks, "tokens": tokens,
            "chunking_s": chunking_s, "chunking_tok_s": tokens / chunking_s, "add_s": add_s,
            "add_tok_s": tokens / add_s, "pdf_pages": pdf_pages, "pdf_bytes": len(pdf), "pdf_s": pdf_s,
            "pdf_pages_s": pdf_pages / pdf_s, "pdf_chars": len(extracted.text)}


def make_pdf(pages: list[str], password: str | None = None) -> bytes:
    """A real PDF, one page per text (Helvetica, wrapped lines), made with pypdf's writer; encrypted (RC4,
    which pypdf writes and reads without extra packages) when given a password."""
    import io
    import textwrap

    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        lines = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in textwrap.wrap(text, 90)]
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td", *(f"({line}) Tj T*" for line in lines), "ET"]
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("latin-1"))
        page.replace_contents(stream)
    if password:
        writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# ----------------------------------------------------------------------------- 2. searching

def bench_search(folder: Path, chunks: int, queries: int) -> dict:
    from slp.projects import ProjectStore
    from slp.projects.chunking import CHARS_PER_TOKEN, CHUNK_TOKENS
    from slp.projects.documents import DocumentIndex

    words = Words(seed=SEED + 1)
    per_doc = 500
    chunk_chars = (CHUNK_TOKENS - 32) * CHARS_PER_TOKEN  # the stride between overlapping chunks
    with ProjectStore(folder / "search.db") as store:
        project = store.create({"name": "library"})
        store.create({"name": "neighbour"})
        index = DocumentIndex(store)
        started = time.perf_counter()
        made = 0
        while made < chunks:
            text = "\n\n".join(words.page(chunk_chars) for _ in range(per_doc))
            made += index.add("library", text.encode(), f"doc{made}.txt", max_bytes=1 << 30).document.chunks
        build_s = time.perf_counter() - started
        index.add("neighbour", "\n\n".join(words.page(chunk_chars) for _ in range(200)).encode(), "other.txt")
        asked = [words.question() for _ in range(queries)]
        for question in asked[:20]:  # warm the page cache
            index.search_id(project.id, question, 8)
        times, found, agree, overlap = [], [], 0, []
        for question in asked:
            started = time.perf_counter()
            hits = index.search_id(project.id, question, 8)
            times.append(time.perf_counter() - started)
            found.append(len(hits))
            exact = exact_bm25(store, project.id, question)
            agree += bool(hits) and bool(exact) and hits[0].chunk == exact[0]
            overlap.append(len({h.chunk for h in hits} & set(exact)) / max(1, len(exact)))
        db_bytes = (folder / "search.db").stat().st_size
        step = asyncio.run(retrieval_step(index, project.id, asked))
    return {"chunks": made, "build_s": build_s, "queries": queries, "p50_ms": statistics.median(times) * 1000,
            "p99_ms": percentile(times, 0.99) * 1000, "mean_hits": statistics.mean(found), "db_mb": db_bytes / 1e6,
            "top1_agree": agree / queries, "top8_overlap": statistics.mean(overlap), **step}


async def retrieval_step(index, project_id: str, asked: list[str]) -> dict:
    """What the agent does for a chat in a project with documents, timed in one event loop as the proxy runs
    it: the search in a thread, the pick within the budget (a quarter of 4,096 tokens), the new messages,
    the body serialised for the engine, and the reply's annotations."""
    from slp.projects.retrieval import CANDIDATES, annotate_reply, citations, pick, with_documents

    reply = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "An answer."}}]}).encode()
    times = []
    for question in asked:
        body = {"model": "m", "messages": [{"role": "user", "content": question}]}
        started = time.perf_counter()
        hits = await asyncio.to_thread(index.search_id, project_id, question, CANDIDATES)
        chosen = pick(hits, 1024)
        json.dumps(with_documents(body, chosen), separators=(",", ":")).encode()
        annotate_reply(reply, citations(chosen))
        times.append(time.perf_counter() - started)
    return {"step_p50_ms": statistics.median(times) * 1000, "step_p99_ms": percentile(times, 0.99) * 1000}


def exact_bm25(store, project_id: str, question: str) -> list[int]:
    """The top 8 chunks of exact BM25 over every word of the question (what the search approximates for
    questions of common words only), for the agreement figures."""
    from slp.projects.chunking import fts_query, query_terms
    from slp.projects.documents import scope_of

    terms = query_terms(question)
    if not terms:
        return []
    with store.transaction() as conn:
        return [row[0] for row in conn.execute(
            "SELECT rowid, bm25(chunks_fts, 0.0, 1.0) AS r FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY r LIMIT 8",
            (f'scope:"{scope_of(project_id)}" AND ({fts_query(terms)})',))]


# ----------------------------------------------------------------------------- 3. a chat's first token

async def first_token(session, base: str, body: dict) -> tuple[float, int]:
    """Seconds to the first content event of a streamed chat, and its prompt tokens (from the usage event)."""
    started = time.perf_counter()
    first, prompt = None, -1
    async with session.post(base + "/v1/chat/completions", json={**body, "stream": True, "max_tokens": 1,
                                                                 "temperature": 0,
                                                                 "stream_options": {"include_usage": True}}) as resp:
        if resp.status != 200:
            raise SystemExit(f"chat: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for line in resp.content:
            if first is None and line.startswith(b"data: {") and b'"content"' in line:
                first = time.perf_counter() - started
            if line.startswith(b"data: {") and b'"usage"' in line:
                prompt = json.loads(line[6:]).get("usage", {}).get("prompt_tokens", prompt)
    return first if first is not None else time.perf_counter() - started, prompt


async def bench_chat(base: str, book: bytes, chats: int, ctx_size: int, share: float) -> dict:
    import aiohttp

    from slp.projects.retrieval import CANDIDATES, pick, with_documents
    from slp.projects.schema import SearchHit

    async with aiohttp.ClientSession() as session:
        async def call(method: str, path: str, **kwargs) -> dict:
            async with session.request(method, base + path, **kwargs) as resp:
                body = await resp.json()
                if resp.status >= 300:
                    raise SystemExit(f"{method} {path}: HTTP {resp.status}: {body}")
                return body

        with_docs = await call("POST", "/v1/projects", json={"name": "with-docs"})
        without = await call("POST", "/v1/projects", json={"name": "without-docs"})
        form = aiohttp.FormData()
        form.add_field("file", book, filename="book.txt")
        started = time.perf_counter()
        added = await call("POST", f"/v1/projects/{with_docs['id']}/documents", data=form)
        upload_s = time.perf_counter() - started
        words = Words(seed=SEED)  # the book's own vocabulary
        questions = [words.question() for _ in range(chats)]
        plans = []
        for question in questions:
            asked = [{"role": "user", "content": question}]
            hits = (await call("POST", f"/v1/projects/{with_docs['id']}/search",
                               json={"query": question, "top_k": CANDIDATES}))["data"]
            chosen = pick([SearchHit(**hit) for hit in hits], int(ctx_size * share))
            given = with_documents({"messages": asked}, chosen)["messages"]  # what the agent's retrieval sends
            plans.append(({"messages": asked, "project_id": with_docs["id"]},
                          {"messages": given, "project_id": without["id"]}))
        for docs_body, plain_body in plans[:3]:  # warm both paths and the engine
            await first_token(session, base, docs_body)
            await first_token(session, base, plain_body)
        ttft: dict[str, list[float]] = {"retrieval": [], "given": []}
        mismatched = 0
        for i, (docs_body, plain_body) in enumerate(plans):
            await first_token(session, base, plain_body)  # the engine caches this prompt: both sides then reuse it
            order = (("retrieval", docs_body), ("given", plain_body))
            prompts = {}
            for name, body in (order if i % 2 == 0 else order[::-1]):
                took, prompts[name] = await first_token(session, base, body)
                ttft[name].append(took)
            mismatched += prompts["retrieval"] != prompts["given"]
    retrieval, given = (statistics.median(ttft[k]) * 1000 for k in ("retrieval", "given"))
    return {"chats": chats, "chunks": added["document"]["chunks"], "upload_s": upload_s, "ttft_retrieval_ms": retrieval,
            "ttft_given_ms": given, "added_ms": retrieval - given, "prompt_mismatches": mismatched}


# ----------------------------------------------------------------------------- report

def report(add: dict, search: dict, chat: dict | None) -> str:
    def verdict(ok: bool) -> str:
        return "pass" if ok else "**FAIL**"

    lines = [
        f"# Project documents: indexing, search and retrieval (#24) ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "`python -m bench.documents` on this machine (see `bench/results/latest.md` for its facts); made-up text "
        "(Zipf-like words), token counts are slp's estimate (4 characters a token).",
        "",
        "| what | goal | measured | result |",
        "|---|---|---|---|",
        f"| add {add['pages']:,} pages ({add['bytes'] / 1e6:.1f} MB, {add['tokens']:,} tokens, {add['chunks']:,} chunks): "
        f"extraction + chunking | - | {add['chunking_tok_s'] / 1e6:.2f} M tokens/s ({add['chunking_s']:.2f} s) | - |",
        f"| the same, chunking + FTS5 indexing (one transaction) | - | {add['add_tok_s'] / 1e6:.2f} M tokens/s "
        f"({add['add_s']:.2f} s) | - |",
        f"| a {add['pdf_pages']}-page PDF ({add['pdf_bytes'] / 1e6:.1f} MB): pypdf text extraction | - | "
        f"{add['pdf_pages_s']:.0f} pages/s ({add['pdf_s']:.2f} s) | - |",
        f"| search over {search['chunks']:,} chunks ({search['queries']} questions, top 8), p50 | ≤ 5 ms | "
        f"{search['p50_ms']:.2f} ms | {verdict(search['p50_ms'] <= 5)} |",
        f"| the same, p99 | - | {search['p99_ms']:.2f} ms | - |",
        f"| retrieval's own work in the agent per chat over those chunks (search in a thread, pick, prompt, "
        f"annotations), p50 | ≤ 10 ms | {search['step_p50_ms']:.2f} ms | {verdict(search['step_p50_ms'] <= 10)} |",
        f"| the same, p99 | - | {search['step_p99_ms']:.2f} ms | - |",
    ]
    if chat is not None:
        lines.append(
            f"| time retrieval adds to a chat's first token ({chat['chats']} chats a side over {chat['chunks']:,} "
            f"chunks, medians: {chat['ttft_retrieval_ms']:.1f} ms with retrieval, {chat['ttft_given_ms']:.1f} ms "
            f"given the same messages) | ≤ 10 ms | {chat['added_ms']:+.2f} ms | {verdict(chat['added_ms'] <= 10)} |")
    lines += [
        "",
        f"Search index: {search['db_mb']:.0f} MB of database for {search['chunks']:,} chunks (built in "
        f"{search['build_s']:.0f} s); {search['mean_hits']:.1f} hits per question on average. Against exact BM25 "
        f"over every word of the question (slow: see slp.projects.documents), the best chunk is the same for "
        f"{search['top1_agree'] * 100:.0f} % of the questions and {search['top8_overlap'] * 100:.0f} % of the top 8 "
        "are shared (the bench's questions are bags of Zipf-drawn words, often all common ones). "
        + (f"The 1,000 pages went to the agent as one upload in {chat['upload_s']:.1f} s; prompts of the two "
           f"sides differed in {chat['prompt_mismatches']} of {chat['chats']} pairs (0: the engine did the same "
           "work on both)." if chat else "The chat part was not run (--no-chat)."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.documents", description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=1000, help="pages of text to add (default 1000)")
    p.add_argument("--pdf-pages", type=int, default=100, help="pages of the PDF (default 100)")
    p.add_argument("--chunks", type=int, default=50000, help="chunks in the searched project (default 50000)")
    p.add_argument("--queries", type=int, default=500, help="searches timed (default 500)")
    p.add_argument("--chats", type=int, default=20, help="chats per side for the first-token cost (default 20)")
    p.add_argument("--no-chat", action="store_true", help="leave out the part that starts an agent and engine")
    p.add_argument("--out", type=Path, default=RESULTS / "documents.md")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` stops the run: still stop its agent
    with tempfile.TemporaryDirectory(prefix="slp-bench-documents-") as tmp:
        folder = Path(tmp)
        add = bench_add(folder, a.pages, a.pdf_pages)
        print(json.dumps(add), flush=True)
        search = bench_search(folder, a.chunks, a.queries)
        print(json.dumps(search), flush=True)
    chat = None
    if not a.no_chat:
        from bench.runner import default_models_dir
        from bench.targets import foreground_agent
        from slp.settings import Settings

        words = Words()
        book = "\f".join(words.page() for _ in range(a.pages)).encode()
        settings = Settings()
        with foreground_agent("slp-bench-documents-", default_models_dir()) as (port, _):
            chat = asyncio.run(bench_chat(f"http://127.0.0.1:{port}", book, a.chats, settings.ctx_size,
                                          settings.retrieval_share))
        print(json.dumps(chat), flush=True)
    text = report(add, search, chat)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
