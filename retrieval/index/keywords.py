"""The keyword side of an index: BM25 over the tweets' texts (tantivy), in `keywords/` beside the shards.

Tokens are lower-cased words, stemmed (English, Snowball), plus hashtags and handles kept whole
(`#NPD`, `@Tesla`), since those are what marketers search for by name; the `<hyperlink>` and
`<mention>` placeholders are dropped (nearly every tweet has one, so they only add noise), and so
are English stopwords. tantivy indexes them from a bounded heap into immutable segment files, so a
build's memory does not grow with the archive, and an `index add` writes one more segment beside
hard links to the old ones instead of rebuilding the keyword index of every tweet. Scores are
tantivy's BM25 (k1 1.2, b 0.75) with the statistics of all segments.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tantivy

from retrieval.errors import RetrievalError

FOLDER = "keywords"
HEAP_BYTES = 64 * 2**20
"""tantivy's indexing heap: a segment is written each time it fills, so it bounds a build's memory."""
LOCKS = (".tantivy-meta.lock", ".tantivy-writer.lock")
"""Empty files tantivy locks to coordinate its readers and writer; not part of the index. Every
reader opens the first for writing, so a build leaves it with the folder's permissions: a group
that may write the folder may search it."""
DEEPEST = 5000
"""The deepest unfiltered ranking read to answer a filtered search before the filter goes into the query."""
REWRITTEN = ("meta.json", ".managed.json")
"""The files a commit replaces; the segment files are never written again once committed."""
_TOKENS = re.compile(r"<hyperlink>|<mention>|[#@]\w+|\w+")
_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there"
    " these they this to was will with".split()
)
"""Lucene's English stopwords."""

_local = threading.local()


def _stemmer() -> Any:
    """A stemmer of this thread's own: PyStemmer's are not thread-safe."""
    if getattr(_local, "stemmer", None) is None:
        import Stemmer

        _local.stemmer = Stemmer.Stemmer("english")
    return _local.stemmer


def tokenize(text: str | None) -> list[str]:
    """The BM25 tokens of one text."""
    stemmer = _stemmer()
    tokens = []
    for token in _TOKENS.findall((text or "").lower()):
        if token in ("<hyperlink>", "<mention>") or token in _STOPWORDS:
            continue
        tokens.append(token if token[0] in "#@" else stemmer.stemWord(token))
    return tokens


def _schema() -> tantivy.Schema:
    schema = tantivy.SchemaBuilder()
    schema.add_text_field("tokens", stored=False, tokenizer_name="whitespace", index_option="freq")
    schema.add_integer_field("vec_id", stored=False, indexed=True, fast=True)
    return schema.build()


def exists(folder: Path) -> bool:
    """Whether the index folder holds a keyword index in today's format."""
    return (Path(folder) / FOLDER / "meta.json").exists()


def write(folder: Path, batches: Iterable[tuple[np.ndarray, Sequence[str | None]]]) -> None:
    """Add the texts, given a batch of (vec_ids, texts) at a time, to the keyword index in
    folder/keywords/ (a new one when there is none). A text without tokens is still a document,
    so every row with a text vector can be filtered the same way."""
    target = Path(folder) / FOLDER
    if exists(folder):
        index = tantivy.Index.open(str(target))
    else:
        target.mkdir(parents=True, exist_ok=True)
        index = tantivy.Index(_schema(), path=str(target))
    writer = index.writer(heap_size=HEAP_BYTES, num_threads=1)
    for vec_ids, texts in batches:
        for vec_id, text in zip(vec_ids.tolist(), texts):
            writer.add_document(tantivy.Document(tokens=" ".join(tokenize(text)), vec_id=vec_id))
    writer.commit()
    writer.wait_merging_threads()
    mode = target.stat().st_mode & 0o666  # the folder's mode follows the umask; tantivy's own files need not
    for lock in LOCKS:
        (target / lock).unlink(missing_ok=True)
    (target / LOCKS[0]).touch(mode)  # a reader opens it for writing: left to the first reader, only it could
    for name in (*REWRITTEN, LOCKS[0]):
        (target / name).chmod(mode)


class KeywordIndex:
    """BM25 search over an index's texts, answered with vec_ids; the segments stay mapped."""

    def __init__(self, folder: Path) -> None:
        index = tantivy.Index.open(str(folder))
        index.config_reader(reload_policy="manual")
        self.schema = index.schema
        self.searcher = index.searcher()
        self.size = self.searcher.num_docs

    @classmethod
    def open(cls, path: Path) -> KeywordIndex | None:
        """The keyword index of the index at `path`, or None for one built before it existed
        (or before it was kept by tantivy)."""
        folder = Path(path) / FOLDER
        if not exists(path):
            if (folder / "vec_ids.npy").exists():
                raise RetrievalError(
                    f"{folder}: the keyword index is in an older format (bm25s); the next `index add` or a rebuild"
                    " writes it anew"
                )
            return None
        try:
            return cls(folder)
        except ValueError as e:  # how tantivy reports an index it cannot open
            reason = str(e).split(":")[0]
            if "PermissionDenied" in str(e):
                reason = "tantivy must be able to write its lock file there, and cannot"
            raise RetrievalError(f"{folder}: cannot open the keyword index: {reason}") from None

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Up to k (vec_id, BM25 score) pairs, best first; `allowed` (sorted vec_ids) restricts
        the search to rows that pass the filters. Rows sharing no token with the query are left out.

        A filter that admits many rows is applied to a deeper unfiltered ranking: the filtered
        ranking is a part of it, so once k admitted rows are found (or the ranking ran out) they
        are the answer, at the cost of one search; otherwise, and for filters that admit few
        rows, the admitted vec_ids go into the query (a term set, whose cost grows with them)."""
        tokens = list(dict.fromkeys(tokenize(query)))
        k = min(k, self.size)
        if not tokens or not k or (allowed is not None and not len(allowed)):
            return []
        words = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "tokens", t)) for t in tokens]
        wanted = tantivy.Query.boolean_query(words)
        if allowed is None:
            return self._top(wanted, k)
        depth = min(self.size, max(4 * k, int(2 * k * self.size / len(allowed))))
        if depth <= DEEPEST:
            hits = self._top(wanted, depth)
            kept = [hit for hit, ok in zip(hits, _members(np.array([v for v, _ in hits], np.int64), allowed)) if ok]
            if len(kept) >= k or len(hits) < depth:
                return kept[:k]
        rows = tantivy.Query.term_set_query(self.schema, "vec_id", allowed.tolist())
        only = tantivy.Query.const_score_query(rows, 0.0)
        return self._top(tantivy.Query.boolean_query([(tantivy.Occur.Must, wanted), (tantivy.Occur.Must, only)]), k)

    def _top(self, query: tantivy.Query, k: int) -> list[tuple[int, float]]:
        hits = self.searcher.search(query, k, count=False).hits
        vec_ids = self.searcher.fast_field_values("vec_id", [address for _, address in hits])
        return [(int(v), float(score)) for (score, _), v in zip(hits, vec_ids)]


def _members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which values are in the sorted array."""
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values
