"""The keyword side of an index: BM25 over the tweets' texts (bm25s), in `keywords/` beside the shards.

Tokens are lower-cased words, stemmed (English, Snowball), plus hashtags and handles kept whole
(`#NPD`, `@Tesla`), since those are what marketers search for by name; the `<hyperlink>` and
`<mention>` placeholders are dropped (nearly every tweet has one, so they only add noise), and so
are English stopwords. bm25s keeps its index as plain arrays (no pickle), so the folder's files
are checksummed like the rest. It is rebuilt whole at every `index add` (about 1 s per 10,000
tweets here): bm25s has no incremental add.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = "keywords"
_TOKENS = re.compile(r"<hyperlink>|<mention>|[#@]\w+|\w+")


_local = threading.local()


@functools.cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def _stemmer() -> Any:
    """A stemmer of this thread's own: PyStemmer's are not thread-safe."""
    if getattr(_local, "stemmer", None) is None:
        import Stemmer

        _local.stemmer = Stemmer.Stemmer("english")
    return _local.stemmer


def tokenize(text: str | None) -> list[str]:
    """The BM25 tokens of one text."""
    stemmer = _stemmer()
    stop = _stopwords()
    tokens = []
    for token in _TOKENS.findall((text or "").lower()):
        if token in ("<hyperlink>", "<mention>") or token in stop:
            continue
        tokens.append(token if token[0] in "#@" else stemmer.stemWord(token))
    return tokens


def build(folder: Path, batches: Iterable[tuple[np.ndarray, Sequence[str | None]]]) -> None:
    """Write the keyword index of the texts, given a batch of (vec_ids, texts) at a time, into
    folder/keywords/; nothing when there are none. Each text is kept as token ids, not strings,
    until bm25s has them: a million tweets' tokens as strings are gigabytes."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG: one line per build
    vocab: dict[str, int] = {}
    docs: list[list[int]] = []
    ids: list[np.ndarray] = []
    for vec_ids, texts in batches:
        docs += [[vocab.setdefault(token, len(vocab)) for token in tokenize(t) or ["\0"]] for t in texts]
        ids.append(np.asarray(vec_ids, dtype=np.int64))
    if not docs:
        return
    target = Path(folder) / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    retriever = bm25s.BM25()
    retriever.index((docs, vocab), show_progress=False)
    retriever.save(str(target))
    np.save(target / "vec_ids.npy", np.concatenate(ids))


class KeywordIndex:
    """BM25 search over an index's texts; positions map back to vec_ids."""

    def __init__(self, folder: Path) -> None:
        import bm25s

        self.retriever = bm25s.BM25.load(str(folder), mmap=True)
        self.vec_ids = np.load(folder / "vec_ids.npy")

    @classmethod
    def open(cls, path: Path) -> KeywordIndex | None:
        """The keyword index of the index at `path`, or None for one built before it existed."""
        folder = Path(path) / FOLDER
        return cls(folder) if (folder / "vec_ids.npy").exists() else None

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Up to k (vec_id, BM25 score) pairs, best first; `allowed` (sorted vec_ids) restricts
        the search to rows that pass the filters. Rows sharing no token with the query are left out."""
        tokens = tokenize(query)
        if not tokens or not len(self.vec_ids):
            return []
        mask = None if allowed is None else np.isin(self.vec_ids, allowed).astype(np.float32)
        found = self.retriever.retrieve(
            [tokens], k=min(k, len(self.vec_ids)), show_progress=False, weight_mask=mask, n_threads=1
        )
        positions, scores = found.documents[0], found.scores[0]
        return [(int(self.vec_ids[p]), float(s)) for p, s in zip(positions, scores) if s > 0]
