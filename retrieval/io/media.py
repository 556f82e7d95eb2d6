"""Images for tweets, from local files, folders and the media column's URLs; a bad one is never a crash.

Media URLs die (the challenge teams lost many), the network may be absent, and a file may be
anything. Each source therefore comes back as a `Media` holding either an RGB image or the
reason it is missing, which the caller counts and reports; nothing is replaced by noise.
Downloads have timeouts, a size limit, a Content-Type check and an on-disk cache, and a run
that finds the network down stops trying it after a few attempts instead of timing out on
every URL.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import io
import logging
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from retrieval.config import cache_dir
from retrieval.errors import RetrievalError
from retrieval.io.media_values import read_media

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
USER_AGENT = "tweet-retrieval/0.1 (media fetcher; +https://github.com/)"
OFFLINE = "offline"
OFFLINE_AFTER = 3
"""Connection-level failures (DNS, refused, unreachable, connect timeout), with no success before
them, after which the network is taken to be down for the rest of the run."""
ACCEPTED_TYPES = ("application/octet-stream", "binary/octet-stream")
"""Content types accepted besides image/*: some servers label images so; PIL decides then."""
CHUNK = 1 << 16


@dataclass(frozen=True)
class Media:
    """One image source and what became of it: an RGB image, or None and the reason."""

    source: str
    image: Image.Image | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


class _Missing(Exception):
    """An item is missing; args: (problem, connection_level)."""

    def __init__(self, problem: str, connection_level: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.connection_level = connection_level


def image_sources(media: str | None) -> list[str]:
    """The images to embed for one tweet, without duplicates, from its media in any form that
    `read_media` takes (the index stores it as a JSON list of {kind, url, thumbnail}).

    A photo gives its thumbnail (the dataset's previewUrl, about 5x fewer bytes than the full
    photo and still far above the 224 pixels CLIP sees), else its url; a video or gif gives its
    thumbnail (an mp4 is not an image).
    """
    sources: list[str] = []
    for item in read_media(media):
        source = (item["thumbnail"] or item["url"]) if item["kind"] == "photo" else item["thumbnail"]
        if source and source not in sources:
            sources.append(source)
    return sources


def images_in_folder(folder: str | Path) -> list[Path]:
    """Image files directly in `folder` (by extension, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas on white (brand logos are often transparent PNGs; black would be wrong)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


class MediaFetcher:
    """Turns paths and URLs into `Media`, in parallel, counting what is missing and why.

    `timeout` bounds connecting and each read; a whole download may take at most 3x that.
    `max_bytes` limits a download or file, `max_pixels` an image (decompression bombs), and
    `max_side` shrinks large images on load (CLIP sees 224 pixels; this bounds memory per image,
    None keeps them whole). `network=False` never touches the network: URLs not in the cache
    are "offline" at once.
    """

    def __init__(
        self,
        cache: Path | None = None,
        *,
        timeout: float = 10.0,
        max_bytes: int = 20 * 2**20,
        max_pixels: int = 50_000_000,
        max_side: int | None = 1024,
        network: bool = True,
        workers: int = 8,
    ) -> None:
        self.cache = Path(cache) if cache is not None else cache_dir() / "media"
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.network = network
        self.workers = max(1, workers)
        self.missing: collections.Counter[str] = collections.Counter()
        self.loaded = 0
        self._lock = threading.Lock()
        self._offline = not network
        self._connection_failures = 0
        self._reached = False

    @property
    def offline(self) -> bool:
        """True once the network is off or was found down; later URLs are not tried."""
        return self._offline

    def fetch(self, sources: Sequence[str], *, progress: bool = False) -> list[Media]:
        """One `Media` per source, in the same order; a source repeated is fetched once."""
        from tqdm import tqdm

        unique = list(dict.fromkeys(sources))
        done: dict[str, Media] = {}
        if unique:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(unique))) as pool:
                futures = [pool.submit(self._one, source) for source in unique]
                for future in tqdm(
                    as_completed(futures), total=len(futures), disable=not progress, unit="img", desc="media"
                ):
                    media = future.result()
                    done[media.source] = media
        results = [done[source] for source in sources]
        for media in results:
            if media.problem is None:
                self.loaded += 1
            else:
                self.missing[media.problem] += 1
        return results

    def summary(self) -> str:
        """One line for the CLI, e.g. '3 of 40 media missing (2 offline, 1 http 404)'."""
        lost = sum(self.missing.values())
        if not lost:
            return f"{self.loaded} media loaded, none missing"
        reasons = ", ".join(f"{n} {problem}" for problem, n in self.missing.most_common())
        return f"{lost} of {lost + self.loaded} media missing ({reasons})"

    def _one(self, source: str) -> Media:
        try:
            parts = urlsplit(source)
            scheme = parts.scheme.lower()
            if scheme in ("http", "https"):
                image = self._from_url(source)
            elif scheme == "file":
                image = self._from_file(Path(urllib.request.url2pathname(parts.path)))
            elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
                raise _Missing(f"unsupported source ({scheme})")
            else:
                image = self._from_file(Path(source).expanduser())
        except _Missing as e:
            log.debug("media %s missing: %s", source, e.problem)
            return Media(source, None, e.problem)
        return Media(source, image, None)

    def _from_file(self, path: Path) -> Image.Image:
        try:
            size = path.stat().st_size
        except OSError:
            raise _Missing("file not found") from None
        if not path.is_file():
            raise _Missing("not a file")
        if size > self.max_bytes:
            raise _Missing("too large")
        try:
            data = path.read_bytes()
        except OSError:
            raise _Missing("unreadable file") from None
        return self._decode(data)

    def _from_url(self, url: str) -> Image.Image:
        cached = self._cache_path(url)
        if cached.is_file():
            try:
                return self._decode(cached.read_bytes())
            except (_Missing, OSError):
                cached.unlink(missing_ok=True)  # a damaged cache entry: fetch it again
        if self._offline:
            raise _Missing(OFFLINE)
        try:
            data = self._download(url)
        except _Missing as e:
            self._note(reached=not e.connection_level, connection_failure=e.connection_level)
            raise
        self._note(reached=True, connection_failure=False)
        image = self._decode(data)  # only bytes that decode are cached
        self._store(cached, data)
        return image

    def _note(self, *, reached: bool, connection_failure: bool) -> None:
        with self._lock:
            self._reached = self._reached or reached
            self._connection_failures += connection_failure
            if not self._reached and not self._offline and self._connection_failures >= OFFLINE_AFTER:
                self._offline = True
                log.warning(
                    "the network looks down (%d connection failures, no success): remaining media URLs are skipped",
                    self._connection_failures,
                )

    def _download(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        deadline = time.monotonic() + 3 * self.timeout
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                kind = response.headers.get("Content-Type")
                if kind is not None:
                    kind = kind.split(";")[0].strip().lower()
                    if not kind.startswith("image/") and kind not in ACCEPTED_TYPES:
                        raise _Missing(f"not an image ({kind or 'no type'})")
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise _Missing("too large")
                body = bytearray()
                while chunk := response.read(CHUNK):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise _Missing("too large")
                    if time.monotonic() > deadline:
                        raise _Missing("timeout")
                return bytes(body)
        except urllib.error.HTTPError as e:
            raise _Missing(f"http {e.code}") from None
        except urllib.error.URLError as e:
            # Raised before any response: DNS, refused, unreachable, connect timeout, TLS.
            reason = e.reason
            if isinstance(reason, ssl.SSLError):
                raise _Missing(f"download failed ({type(reason).__name__})") from None
            if isinstance(reason, TimeoutError):
                raise _Missing("timeout", connection_level=True) from None
            if isinstance(reason, OSError):
                raise _Missing("unreachable", connection_level=True) from None
            raise _Missing(f"download failed ({reason})") from None
        except TimeoutError:
            raise _Missing("timeout") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise _Missing(f"download failed ({type(e).__name__})") from None

    def _decode(self, data: bytes) -> Image.Image:
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _Missing("not an image") from None
        except Image.DecompressionBombError:
            raise _Missing("too large") from None
        # Hostile or damaged files make PIL raise nearly anything (OSError, SyntaxError, struct.error...).
        except Exception:
            raise _Missing("corrupt image") from None
        if image.width * image.height > self.max_pixels:
            raise _Missing("too large")
        try:
            if self.max_side:
                image.draft("RGB", (self.max_side, self.max_side))  # JPEG: decode at a reduced scale
            image.load()
            image = _to_rgb(ImageOps.exif_transpose(image))
            if self.max_side:
                image.thumbnail((self.max_side, self.max_side))
        except Image.DecompressionBombError:
            raise _Missing("too large") from None
        except Exception:
            raise _Missing("corrupt image") from None
        return image

    def _cache_path(self, url: str) -> Path:
        key = hashlib.sha1(url.encode("utf-8")).hexdigest()
        return self.cache / key[:2] / key

    def _store(self, path: Path, data: bytes) -> None:
        """Write the bytes to a temporary file, then rename: a reader never sees half an image."""
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot cache %s: %s", path, e)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def load_image(source: str | Path) -> Image.Image:
    """One query image from a file or URL, or a one-line error saying why it cannot be used."""
    found = MediaFetcher().fetch([str(source)])[0]
    if found.image is None:
        raise RetrievalError(f"{source}: {found.problem}")
    return found.image


def decode_image(data: bytes, *, max_bytes: int = 20 * 2**20) -> Image.Image:
    """An uploaded image's bytes as an RGB image, with the limits media files have (size,
    pixels, format), or a one-line error saying why it cannot be used."""
    if len(data) > max_bytes:
        raise RetrievalError(f"image of {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        return MediaFetcher(network=False, max_bytes=max_bytes)._decode(data)
    except _Missing as e:
        raise RetrievalError(f"the uploaded image cannot be used: {e.problem}") from None
