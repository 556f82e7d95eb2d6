"""Raw model output to one tweet in the dataset's form: the first paragraph, placeholders for links
and handles as the brand uses them, no emoji soup, at most 280 characters.

A pure function of text, tested without a model; small models need every one of these repairs
(docs/generation.md lists what each fixed on the tuning rows).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

MAX_CHARS = 280
HYPERLINK, MENTION = "<hyperlink>", "<mention>"


class Example(Protocol):
    """A past tweet shown to the model: its trailing links are the ones the reply gets."""

    content: str


_URL = re.compile(r"(?:https?://|www\.)\S+|\b(?:t\.co|bit\.ly)/\S+", re.I)
_HANDLE = re.compile(r"(?<![\w<])@\w+")
_LINK_WORDS = re.compile(r"[<\[{(]\s*(?:insert\s+)?(?:hyper)?(?:link|url)\b[^<>\[\]{}()]{0,30}[>\]})]", re.I)
_MENTION_WORDS = re.compile(
    r"[<\[{(]\s*(?:insert\s+)?(?:mention|user(?:name)?|handle)(?:[_ ]?\w{0,12})?\s*[>\]})]", re.I
)
_LABEL = re.compile(r"^\s*(?:here(?:'s| is)\b[^:\n]*:|(?:new )?tweet\s*\d*\s*:|\d+[.)]\s+)", re.I)
_BROKEN = re.compile(r"<\s*(hyperlink|mention)\b\s*>?", re.I)
_REPEATS = re.compile(r"(<hyperlink>|<mention>)(?:\s*\1){2,}")
_LINK_TAIL = re.compile(r"(?:\s*<hyperlink>)+\s*$")
_PICTOGRAPH = r"[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF]"
_EMOJI = rf"{_PICTOGRAPH}(?:\ufe0f|[\U0001F3FB-\U0001F3FF]|\u200d{_PICTOGRAPH})*"  # with its modifiers and ZWJ joins
_EMOJI_RUN = re.compile(rf"(?:{_EMOJI}\s*){{4,}}")
"""Four or more emoji in a row: 0.7% of the real tweets, the usual failure of a small model."""


def _first_three_emoji(run: re.Match[str]) -> str:
    return "".join(re.findall(_EMOJI, run.group())[:3]) + (" " if run.group()[-1].isspace() else "")


def link_tail(text: str) -> str:
    """The run of `<hyperlink>` placeholders a tweet ends with ('', '<hyperlink>', '<hyperlink> <hyperlink>')."""
    found = _LINK_TAIL.search(text)
    return " ".join(found.group().split()) if found else ""


def postprocess(text: str, exemplars: Sequence[Example] = ()) -> str:
    """One tweet from raw model output: the first paragraph, labels and quotes stripped, links and
    handles turned into the dataset's placeholders, the trailing links the brand uses most in the
    exemplars (every tweet in the data ends with one or two), cut to 280 characters at a word
    boundary with those links kept."""
    text = text.replace("\r", "")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = next((p for p in paragraphs if _LABEL.sub("", p).strip()), "")
    text = _LABEL.sub("", text).strip().strip('"“”').strip()
    text = _BROKEN.sub(lambda m: f"<{m.group(1).lower()}>", text)  # '<hyperlink' cut short, '< mention >'
    text = _LINK_WORDS.sub(HYPERLINK, text)
    text = _MENTION_WORDS.sub(MENTION, text)
    text = _URL.sub(HYPERLINK, text)
    text = _HANDLE.sub(MENTION, text)
    text = _REPEATS.sub(r"\1 \1", text)
    text = re.sub(r"(\S)\1{3,}", r"\1\1\1", text)  # runs of one character or emoji
    text = _EMOJI_RUN.sub(_first_three_emoji, text)
    text = re.sub(r"[ \t]+", " ", text).strip()
    if not _LINK_TAIL.sub("", text).strip():
        return ""
    tail = link_tail(text)
    if exemplars:
        tail = Counter(link_tail(e.content) for e in exemplars).most_common(1)[0][0]
    text = _LINK_TAIL.sub("", text).rstrip()
    limit = MAX_CHARS - (len(tail) + 1 if tail else 0)
    if len(text) > limit:
        cut = text[: limit + 1]
        text = (cut[: cut.rfind(" ")] if " " in cut else cut[:limit]).rstrip()
        text = text[:limit]
    return f"{text} {tail}".strip()
