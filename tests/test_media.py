"""Media: local files, folders, the media column's URLs; downloads against a loopback HTTP server.

Every bad item must come back as missing with its reason, never as an exception or noise.
"""

from __future__ import annotations

import collections
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from retrieval.io.media import OFFLINE_AFTER, Media, MediaFetcher, image_sources, images_in_folder
from retrieval.io.media_values import parse_media
from tests.conftest import BEHAVIOUR, make_image


def png_bytes(seed: int = 1, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    make_image(seed, size).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(seed: int = 1, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    make_image(seed, size).save(out, "JPEG")
    return out.getvalue()


# --- local files and folders ---


def test_local_files_and_file_urls_load_as_rgb(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(size=(90, 60)))
    Image.new("LA", (20, 10), (0, 0)).save(tmp_path / "clear.png")  # fully transparent
    fetcher = MediaFetcher(tmp_path / "cache", network=False)
    jpg, transparent, url = fetcher.fetch(
        [str(tmp_path / "a.jpg"), str(tmp_path / "clear.png"), (tmp_path / "a.jpg").as_uri()]
    )
    assert jpg.ok and jpg.problem is None and jpg.image.mode == "RGB" and jpg.image.size == (90, 60)
    assert transparent.image.mode == "RGB" and transparent.image.getpixel((5, 5)) == (255, 255, 255)
    assert url.ok and url.source.startswith("file://")
    assert fetcher.loaded == 3 and not fetcher.missing


def test_bad_local_items_are_missing_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("<html>not really a jpeg</html>")
    (tmp_path / "truncated.jpg").write_bytes(jpeg_bytes(size=(150, 100))[:1500])
    (tmp_path / "big.png").write_bytes(png_bytes(size=(300, 200)))
    (tmp_path / "empty.png").write_bytes(b"")
    fetcher = MediaFetcher(tmp_path / "cache", max_pixels=200 * 100, network=False)
    sources = ["text.jpg", "truncated.jpg", "big.png", "empty.png", "absent.jpg", "ftp://example.com/a.jpg", "."]
    media = fetcher.fetch([str(tmp_path / s) if "://" not in s else s for s in sources])
    problems = [m.problem for m in media]
    assert problems == [
        "not an image",
        "corrupt image",
        "too large",
        "not an image",
        "file not found",
        "unsupported source (ftp)",
        "not a file",
    ]
    assert all(m.image is None for m in media)
    assert fetcher.missing["not an image"] == 2 and fetcher.loaded == 0
    assert fetcher.summary() == (
        "7 of 7 media missing (2 not an image, 1 corrupt image, 1 too large, 1 file not found, "
        "1 unsupported source (ftp), 1 not a file)"
    )


def test_file_over_max_bytes_is_too_large_and_huge_images_are_shrunk(tmp_path: Path) -> None:
    (tmp_path / "wide.png").write_bytes(png_bytes(size=(3000, 90)))
    assert MediaFetcher(network=False, max_bytes=100).fetch([str(tmp_path / "wide.png")])[0].problem == "too large"
    assert MediaFetcher(network=False).fetch([str(tmp_path / "wide.png")])[0].image.size == (1024, 31)
    assert MediaFetcher(network=False, max_side=None).fetch([str(tmp_path / "wide.png")])[0].image.size == (3000, 90)


def test_fetch_keeps_order_and_counts_repeats(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    good, gone = str(tmp_path / "a.png"), str(tmp_path / "gone.png")
    fetcher = MediaFetcher(network=False, workers=3)
    media = fetcher.fetch([good, gone, good, gone, good])
    assert [m.source for m in media] == [good, gone, good, gone, good]
    assert [m.ok for m in media] == [True, False, True, False, True]
    assert fetcher.fetch([]) == []
    assert fetcher.loaded == 3 and fetcher.missing == collections.Counter({"file not found": 2})
    assert fetcher.summary() == "2 of 5 media missing (2 file not found)"


def test_images_in_folder_lists_image_files_sorted(image_folder: Path, tmp_path: Path) -> None:
    files = images_in_folder(image_folder)
    assert [f.name for f in files] == [f"img{i}.{'png' if i % 2 else 'jpg'}" for i in range(8)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "B.JPG").write_bytes(jpeg_bytes())
    (tmp_path / "a.webp").write_bytes(b"")
    (tmp_path / "readme.md").write_text("x")
    assert [f.name for f in images_in_folder(tmp_path)] == ["B.JPG", "a.webp"]
    assert images_in_folder(tmp_path / "nowhere") == []
    media = MediaFetcher(network=False).fetch([str(f) for f in files])
    assert all(m.ok for m in media)


# --- the media column ---


def test_image_sources_from_real_media_strings() -> None:
    raw = [m for m in pq.read_table(BEHAVIOUR, columns=["media"]).column(0).to_pylist()[:300] if m]
    kinds: collections.Counter[str] = collections.Counter()
    for value in raw:
        items = parse_media(value)
        sources = image_sources(json.dumps(items))
        assert sources == image_sources(value), "the raw Python-repr text gives the same sources"
        assert all(s.startswith("https://pbs.twimg.com/") and ".mp4" not in s for s in sources)
        for item in items:
            kinds[item["kind"]] += 1
            expected = (item["thumbnail"] or item["url"]) if item["kind"] == "photo" else item["thumbnail"]
            assert expected in sources
    assert kinds["photo"] and kinds["video"], kinds


def test_image_sources_edge_cases() -> None:
    video = {"kind": "video", "url": "https://v/x.mp4", "thumbnail": "https://t/x.jpg"}
    photo = {"kind": "photo", "url": "https://t/p-large.jpg", "thumbnail": "https://t/p.jpg"}
    local = {"kind": "photo", "url": "/pics/a.png", "thumbnail": None}
    assert image_sources(json.dumps([video, photo, video, local])) == [
        "https://t/x.jpg",
        "https://t/p.jpg",
        "/pics/a.png",
    ]
    assert image_sources(json.dumps([{"kind": "gif", "url": "https://v/g.mp4", "thumbnail": None}])) == []
    assert image_sources(None) == image_sources("") == image_sources("[]") == image_sources("  ") == []
    assert image_sources("/data/pics/a.jpg") == ["/data/pics/a.jpg"]
    assert image_sources('["a.jpg", "b.png", "a.jpg"]') == ["a.jpg", "b.png"]
    assert image_sources("[Photo(garbled") == [] and image_sources('{"x": 1}') == []


# --- downloads against a loopback server ---

PNG = png_bytes(3)
LIMIT = 20_000


class Handler(BaseHTTPRequestHandler):
    hits: collections.Counter[str] = collections.Counter()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Handler.hits[self.path] += 1
        routes = {
            "/img.png": (200, "image/png", PNG),
            "/octet": (200, "application/octet-stream", PNG),
            "/page.html": (200, "text/html; charset=utf-8", b"<html>hello</html>"),
            "/big.png": (200, "image/png", b"\x89PNG" + b"0" * LIMIT),
            "/fake.jpg": (200, "image/jpeg", b"this is not a jpeg"),
        }
        if self.path == "/slow.png":
            time.sleep(1.0)
        if self.path in routes or self.path == "/slow.png":
            status, kind, body = routes.get(self.path, (200, "image/png", PNG))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
        elif self.path == "/stream.png":  # no Content-Length: the limit must hold while reading
            body = b"\x89PNG" + b"0" * LIMIT
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
        else:
            self.send_error(404)
            return
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_is_cached_and_served_again_without_the_server(server: str, tmp_path: Path) -> None:
    url = f"{server}/img.png"
    first = MediaFetcher(tmp_path / "cache", timeout=2).fetch([url])[0]
    assert first.ok and first.image.size == (64, 48) and Handler.hits["/img.png"] == 1
    cached = list((tmp_path / "cache").rglob("*"))
    assert [p.read_bytes() for p in cached if p.is_file()] == [PNG]
    offline = MediaFetcher(tmp_path / "cache", network=False)
    again = offline.fetch([url])[0]
    assert again.ok and Handler.hits["/img.png"] == 1
    assert list(again.image.getdata()) == list(first.image.getdata())
    assert offline.fetch([f"{server}/other.png"])[0].problem == "offline" and Handler.hits["/other.png"] == 0


def test_bad_downloads_are_missing_with_their_reason_and_not_cached(server: str, tmp_path: Path) -> None:
    fetcher = MediaFetcher(tmp_path / "cache", timeout=0.3, max_bytes=LIMIT)
    paths = ["/nothing.jpg", "/page.html", "/big.png", "/stream.png", "/slow.png", "/fake.jpg", "/octet"]
    media = fetcher.fetch([server + p for p in paths])
    assert [m.problem for m in media] == [
        "http 404",
        "not an image (text/html)",
        "too large",
        "too large",
        "timeout",
        "not an image",
        None,
    ]
    assert not fetcher.offline, "a server that answers means the network is up"
    assert len([p for p in (tmp_path / "cache").rglob("*") if p.is_file()]) == 1, "only the good image is cached"


def test_unreachable_network_is_offline_after_a_few_attempts(server: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    fetcher = MediaFetcher(tmp_path / "cache", timeout=1, workers=4)
    media = fetcher.fetch([f"{dead}/{i}.jpg" for i in range(200)])
    assert all(isinstance(m, Media) and m.image is None for m in media)
    assert fetcher.offline
    assert fetcher.missing["unreachable"] >= OFFLINE_AFTER
    assert fetcher.missing["offline"] >= 200 - OFFLINE_AFTER - 4, fetcher.missing
    hits = Handler.hits["/img.png"]
    assert fetcher.fetch([f"{server}/img.png"])[0].problem == "offline", "the rest of the run stays offline"
    assert Handler.hits["/img.png"] == hits


def test_dead_hosts_after_a_success_are_not_taken_for_offline(server: str, tmp_path: Path) -> None:
    fetcher = MediaFetcher(tmp_path / "cache", timeout=1, workers=2)
    assert fetcher.fetch([f"{server}/img.png"])[0].ok
    dead = f"http://127.0.0.1:{closed_port()}"
    media = fetcher.fetch([f"{dead}/{i}.jpg" for i in range(10)])
    assert [m.problem for m in media] == ["unreachable"] * 10 and not fetcher.offline


def test_network_off_never_connects(server: str, tmp_path: Path) -> None:
    fetcher = MediaFetcher(tmp_path / "cache", network=False)
    media = fetcher.fetch([f"{server}/img.png?off", f"{server}/never.jpg"])
    assert [m.problem for m in media] == ["offline", "offline"] and fetcher.offline
    assert Handler.hits["/img.png?off"] == Handler.hits["/never.jpg"] == 0
