"""A media value as users have it (the dataset's `[Photo(...)]` text, a URL, a path, a JSON list
of these) as a list of {kind, url, thumbnail}; fetching the images is media.py's job."""

from __future__ import annotations

import json
import re
from typing import Any

# Media parsing is the largest per-row cost, so each pattern starts with a literal the
# regex engine can jump to instead of trying every position of the long URLs.
_URL_KEYS = ("previewUrl", "fullUrl", "thumbnailUrl")
_URL_FIELDS = {key: re.compile(key + r"""=(?:'([^']*)'|"([^"]*)")""") for key in _URL_KEYS}
_VARIANT = re.compile(r"""VideoVariant\(contentType='([^']*)', url=(?:'([^']*)'|"([^"]*)"), bitrate=(\d+|None)\)""")


def _url_field(key: str, body: str) -> str | None:
    match = _URL_FIELDS[key].search(body)
    return (match.group(1) or match.group(2) or None) if match else None


def _best_video(body: str) -> str | None:
    """The mp4 variant with the highest bitrate, else the first variant with a url."""
    variants = [
        (kind, single or double, int(rate) if rate.isdigit() else -1)
        for kind, single, double, rate in _VARIANT.findall(body)
    ]
    mp4 = [v for v in variants if v[0] == "video/mp4" and v[1]]
    if mp4:
        return max(mp4, key=lambda v: v[2])[1]
    return next((url for _, url, _ in variants if url), None)


def parse_media(value: str | None) -> list[dict[str, str | None]]:
    """Parse the dataset's Python-repr media list with regexes (never eval: it is untrusted text).

    Photos give url=fullUrl and thumbnail=previewUrl; videos and gifs give the mp4 with the
    highest bitrate and their thumbnailUrl. Anything unrecognised gives [], never an error,
    because media is decoration and must not cost us a tweet.
    """
    if not value:
        return []
    # Cut the list into objects: [prefix, kind, body, kind, body, ...]. "VideoVariant(" has no "Video(".
    marked = value.replace("Photo(", "\0photo\0").replace("Video(", "\0video\0").replace("Gif(", "\0gif\0")
    pieces = marked.split("\0")
    items: list[dict[str, str | None]] = []
    for kind, body in zip(pieces[1::2], pieces[2::2], strict=False):
        if kind == "photo":
            thumbnail = _url_field("previewUrl", body)
            url = _url_field("fullUrl", body) or thumbnail
        else:
            thumbnail, url = _url_field("thumbnailUrl", body), _best_video(body)
        if url or thumbnail:
            items.append({"kind": kind, "url": url, "thumbnail": thumbnail})
    return items


_VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".m3u8")


def _medium(item: Any) -> dict[str, str | None] | None:
    """One medium from a URL or path (kind from its extension) or a {kind, url, thumbnail} object."""
    if isinstance(item, str) and item.strip():
        url = item.strip()
        suffix = url.split("?")[0].lower()
        kind = "gif" if suffix.endswith(".gif") else "video" if suffix.endswith(_VIDEO_SUFFIXES) else "photo"
        return {"kind": kind, "url": url, "thumbnail": None}
    if isinstance(item, dict) and (item.get("url") or item.get("thumbnail")):
        kind = item.get("kind") if item.get("kind") in ("photo", "video", "gif") else "photo"
        return {"kind": kind, "url": item.get("url") or None, "thumbnail": item.get("thumbnail") or None}
    return None


def read_media(value: Any) -> list[dict[str, str | None]]:
    """A media value as users have it, as a list of {kind, url, thumbnail}: the dataset's
    `[Photo(...)]` text, a JSON list (of URLs, paths or objects), a list, or one URL or path.

    Anything unrecognised gives [], never an error: media is decoration and must not cost a tweet."""
    if isinstance(value, list | tuple):
        items: Any = list(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("[") and ("Photo(" in text or "Video(" in text or "Gif(" in text):
            return parse_media(text)
        try:
            items = json.loads(text) if text[0] in "[{" else [text]
        except json.JSONDecodeError:
            return []
    else:
        return []
    items = items if isinstance(items, list) else [items]
    return [m for m in map(_medium, items) if m is not None]
