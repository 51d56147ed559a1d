"""A local BM25 retriever over a document corpus, and the `search` tool a multi-turn rollout calls.

StepSearch (arXiv 2505.15107, spec 11 (e)) retrieves with E5 + FAISS over MuSiQue / wiki-18; the CPU substitute is
lexical BM25 (`bm25s`, the `agents` extra) over a small corpus: same protocol (the top-k documents of a query),
no embedding model. Documents are ``{"id", "title", "text"}`` dicts; a document is indexed as ``title + text``
(lowercased, English stopwords removed, no stemming).

Observations use the paper's format (spec 11 (d)): ``Doc i<## Title: T ##> content``, one document per line;
`parse_docs` reads them back (the StepSearch rewards need the documents each search step returned).

Corpora live in JSONL files (one document per line, optionally with a ``corpus_id`` field that splits one file
into several small corpora). `corpus_retriever` builds each (file, corpus_id) index once per process and
reuses it, so a rollout never re-indexes; `search_tool` turns a retriever, or a per-row choice of corpus, into
a tool ``fn(arguments, row) -> str`` for `modules.rollout.multiturn.MultiTurnToolEngine`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

DOC_MARKER = re.compile(r"Doc (\d+)<## Title: (.*?) ##>")


class BM25Retriever:
    """Top-k BM25 search over `docs` (Lucene BM25, k1 = 1.5, b = 0.75, as `bm25s` defaults).

    >>> r = BM25Retriever([{"id": "a", "title": "Alice", "text": "Alice was born in Norvania."},
    ...                    {"id": "b", "title": "Norvania", "text": "Norvania's capital is Kelport."}], k=1)
    >>> [d["id"] for d in r.search("capital of Norvania")]
    ['b']
    """

    def __init__(self, docs: list[dict], k: int = 3, *, k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        if int(k) < 1:
            raise ValueError(f"BM25Retriever: k={k}; it must be >= 1")
        if not docs:
            raise ValueError("BM25Retriever: the corpus has no documents")
        clean = []
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                raise ValueError(f"BM25Retriever: document {i} must be a dict with a 'text' string "
                                 f"(and optional 'id', 'title'); got {str(doc)[:120]!r}")
            clean.append({"id": str(doc.get("id", i)), "title": str(doc.get("title", "")), "text": doc["text"]})
        self.docs, self.k = clean, int(k)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        corpus = [f"{d['title']} {d['text']}".strip() for d in clean]
        self._bm25.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, k: int | None = None) -> list[dict]:
        """The top-k documents for `query`, best first (always k documents, as a dense retriever returns:
        when no query term is in the corpus, the scores tie at 0 and the order is the index's)."""
        import bm25s

        k = min(int(k or self.k), len(self.docs))
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        ids, _ = self._bm25.retrieve(tokens, k=k, show_progress=False)
        return [self.docs[int(j)] for j in ids[0]]


def format_docs(docs: list[dict]) -> str:
    """The observation text of retrieved docs, in StepSearch's form.

    >>> format_docs([{"title": "Kelport", "text": "Kelport is a port."}, {"title": "X", "text": "Y."}])
    'Doc 1<## Title: Kelport ##> Kelport is a port.\\nDoc 2<## Title: X ##> Y.'
    """
    return "\n".join(f"Doc {i}<## Title: {d.get('title', '')} ##> {d['text']}" for i, d in enumerate(docs, start=1))


def parse_docs(text: str) -> list[dict]:
    """The documents in an observation written by `format_docs`: ``[{"title", "text"}]``, where text is what
    follows the ``<## Title: T ##>`` marker up to the next marker (spec 11 (b)); the surrounding
    ``<information>`` tags are dropped. A document cut by the observation budget keeps its partial text.

    >>> parse_docs("\\n<information>Doc 1<## Title: A ##> a b.\\nDoc 2<## Title: B ##> c</information>\\n")
    [{'title': 'A', 'text': 'a b.'}, {'title': 'B', 'text': 'c'}]
    """
    body = text.replace("<information>", "").replace("</information>", "")
    marks = list(DOC_MARKER.finditer(body))
    out = []
    for m, nxt in zip(marks, [*marks[1:], None]):
        content = body[m.end():nxt.start() if nxt is not None else len(body)]
        out.append({"title": m.group(2), "text": content.strip()})
    return out


# --------------------------------------------------------------------------------------------- corpora
@functools.lru_cache(maxsize=16)
def _read_corpus(path: str, stamp: tuple[int, int]) -> dict[Any, list[dict]]:
    by_id: dict[Any, list[dict]] = {None: []}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"corpus {path!r}: line {line_no} is not valid JSON ({err})") from None
            by_id[None].append(doc)
            if isinstance(doc, dict) and doc.get("corpus_id") is not None:
                by_id.setdefault(doc["corpus_id"], []).append(doc)
    return by_id


def load_corpus(path: str | os.PathLike, corpus_id: Any = None) -> list[dict]:
    """The documents of a JSONL corpus (all of them, or those whose ``corpus_id`` field equals `corpus_id`);
    the file is read once per process and modification."""
    path = os.fspath(Path(path).expanduser().resolve())
    try:
        st = os.stat(path)
    except OSError:
        raise FileNotFoundError(f"corpus file {path!r} does not exist; give a JSONL file with one "
                                '{"id", "title", "text"} document per line') from None
    by_id = _read_corpus(path, (st.st_mtime_ns, st.st_size))
    if corpus_id not in by_id:
        raise ValueError(f"corpus {path!r} has no documents with corpus_id={corpus_id!r}")
    return by_id[corpus_id]


@functools.lru_cache(maxsize=512)
def _cached_retriever(path: str, stamp: tuple[int, int], corpus_id: Any, k: int) -> BM25Retriever:
    return BM25Retriever(load_corpus(path, corpus_id), k=k)


def corpus_retriever(path: str | os.PathLike, corpus_id: Any = None, k: int = 3) -> BM25Retriever:
    """A `BM25Retriever` over `load_corpus(path, corpus_id)`, built once per (file version, corpus_id, k)."""
    resolved = os.fspath(Path(path).expanduser().resolve())
    try:
        st = os.stat(resolved)
    except OSError:
        raise FileNotFoundError(f"corpus file {resolved!r} does not exist") from None
    return _cached_retriever(resolved, (st.st_mtime_ns, st.st_size), corpus_id, int(k))


def search_tool(retriever: BM25Retriever | None = None, *, corpus: str | None = None, corpus_column: str = "corpus",
                corpus_id_column: str = "corpus_id", k: int | None = None):
    """A tool ``fn(arguments, row) -> str``: search the query `arguments`, return `format_docs` of the top-k.

    The corpus is `retriever`, else the JSONL file `corpus` (global), else the file named by the row's
    `corpus_column`; a row's `corpus_id_column` value (when present) selects the documents with that
    ``corpus_id``. Indexes are cached (`corpus_retriever`). `k` (null = the retriever's own, 3 for corpus files)
    documents per search.

    >>> r = BM25Retriever([{"title": "A", "text": "apples are red"}, {"title": "B", "text": "sky is blue"}], k=1)
    >>> search_tool(r)("colour of the sky", {})
    'Doc 1<## Title: B ##> sky is blue'
    """

    def search(arguments: str, row: dict) -> str:
        if retriever is not None:
            found = retriever.search(arguments, k)
        else:
            path = corpus if corpus is not None else row.get(corpus_column)
            if path is None:
                raise ValueError(f"no corpus: give a global corpus file or a {corpus_column!r} column in each row")
            found = corpus_retriever(path, row.get(corpus_id_column), k or 3).search(arguments)
        return format_docs(found)

    return search
