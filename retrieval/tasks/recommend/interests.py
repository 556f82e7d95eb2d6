"""A profile's interests in words: the keyphrases of what the person liked and wrote.

YAKE (statistical, per text collection, no model and no download) over the texts with the
`<hyperlink>`/`<mention>` placeholders and URLs removed. KeyBERT on our own MPNet was the other
candidate; it needs the text model loaded for every profile write, and YAKE takes ~10 ms."""

from __future__ import annotations

import re
from collections.abc import Sequence

PLACEHOLDERS = re.compile(r"<hyperlink>|<mention>|https?://\S+|&amp;|&gt;|&lt;", re.IGNORECASE)
TOP = 10
"""Interests kept per profile."""


def interests(texts: Sequence[str], top: int = TOP) -> tuple[tuple[str, float], ...]:
    """Up to `top` (phrase, weight) pairs, best first; weights in (0, 1], the best is 1."""
    import yake

    cleaned = [PLACEHOLDERS.sub(" ", t) for t in texts if t and t.strip()]
    if not cleaned:
        return ()
    found = yake.KeywordExtractor(lan="en", n=2, top=top * 2, dedupLim=0.7).extract_keywords("\n".join(cleaned))
    phrases: dict[str, float] = {}
    for phrase, score in found:  # a lower YAKE score is a better phrase
        key = phrase.lower()
        if len(key) > 2 and key not in phrases:
            phrases[key] = float(score)
    best = sorted(phrases.items(), key=lambda item: item[1])[:top]
    if not best:
        return ()
    lowest = max(best[0][1], 1e-12)
    return tuple((phrase, round(lowest / max(score, 1e-12), 4)) for phrase, score in best)


def matching(interests_: Sequence[tuple[str, float]], text: str | None) -> list[str]:
    """The interests whose phrase occurs in the text (case-insensitive, whole words)."""
    if not text:
        return []
    lower = text.lower()
    return [p for p, _ in interests_ if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", lower)]
