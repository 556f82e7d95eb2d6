"""The HTTP API and the page: FastAPI's TestClient on a real index of labelled tweets (fake
embedder), one `serve` subprocess over real HTTP, and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import LABELLED, HashEmbedder
from fastapi.testclient import TestClient

from retrieval.apps.api import served as served_module
from retrieval.apps.api.app import create_app
from retrieval.apps.api.served import ModelQueue, ServedIndex
from retrieval.pipeline.build import add_to_index, build_index

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def tweets() -> list[dict]:
    return pq.read_table(LABELLED).slice(0, 400).to_pylist()


@pytest.fixture(scope="module")
def index_path(tmp_path_factory: pytest.TempPathFactory, tweets: list[dict]) -> Path:
    folder = tmp_path_factory.mktemp("served")
    pq.write_table(pq.read_table(LABELLED).slice(0, 400), folder / "labelled.parquet")
    build_index(folder / "labelled.parquet", folder / "brand", embedder=HashEmbedder(), progress=False)
    return folder / "brand"


@pytest.fixture()
def client(index_path: Path) -> TestClient:
    return TestClient(create_app([ServedIndex(index_path, embedder=HashEmbedder())]))


def _tweet_with_text(tweets: list[dict], n: int = 7) -> dict:
    return [t for t in tweets if t["content"] and t["username"]][n]


def test_indexes_and_tweets(client: TestClient, tweets: list[dict]) -> None:
    (info,) = client.get("/v1/indexes").json()
    assert (info["name"], info["rows"], info["version"], info["spaces"]) == ("brand", 400, 1, ["text"])
    assert client.get("/v1/indexes/brand").json()["rows"] == 400
    first = _tweet_with_text(tweets)
    got = client.get(f"/v1/tweets/brand/{first['id']}").json()
    assert (got["id"], got["content"], got["likes"]) == (first["id"], first["content"], first["likes"])
    missing = client.get("/v1/tweets/brand/999999999")
    assert missing.status_code == 404 and missing.json()["error"] == "brand: no tweet with id 999999999"


def test_similar_by_text_by_id_and_with_filters(client: TestClient, tweets: list[dict]) -> None:
    tweet = _tweet_with_text(tweets)
    found = client.post("/v1/similar", json={"index": "brand", "text": tweet["content"], "k": 5}).json()
    assert found["version"] == 1 and len(found["hits"]) == 5
    best = found["hits"][0]
    assert best["content"] == tweet["content"] and best["score"] > 0.999 and best["rank"] == 1
    assert set(best) >= {"id", "score", "date", "username", "company", "likes", "content", "media"}
    account = tweet["username"]
    filtered = client.post(
        "/v1/similar", json={"index": "brand", "text": "new", "k": 5, "filters": {"username": account.upper()}}
    ).json()["hits"]
    assert filtered and all(h["username"] == account for h in filtered)
    around = client.post("/v1/similar", json={"index": "brand", "id": tweet["id"], "k": 3}).json()["hits"]
    assert len(around) == 3 and tweet["id"] not in [h["id"] for h in around]


def test_bad_requests_get_their_status_and_a_json_error(client: TestClient) -> None:
    cases = [
        ({"index": "nope", "text": "x"}, 404, "no index named 'nope'"),
        ({"index": "brand"}, 400, "give one of text, id or image"),
        ({"index": "brand", "text": "x", "k": 0}, 422, "k: "),
        ({"index": "brand", "text": "x", "colour": "red"}, 422, "colour: "),
        ({"index": "brand", "id": 999999999}, 404, "no tweet with id 999999999"),
        ({"index": "brand", "image": "not base64!"}, 400, "not valid base64"),
        ({"index": "brand", "image": base64.b64encode(b"GIF89a broken").decode()}, 400, "cannot be used"),
    ]
    for body, status, words in cases:
        answer = client.post("/v1/similar", json=body)
        assert answer.status_code == status and words in answer.json()["error"], (body, answer.text)
    huge = client.post("/v1/similar", content=b"x" * (20 * 2**20), headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "MiB limit" in huge.json()["error"]
    broken = client.post("/v1/similar", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"].startswith("body: not valid JSON (")
    untyped = client.post("/v1/similar", content=b'{"index": "brand", "text": "x"}')
    assert untyped.status_code == 422 and "Content-Type: application/json" in untyped.json()["error"]


def test_an_image_query_on_a_text_index_says_what_is_missing(client: TestClient) -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(png, format="PNG")
    answer = client.post("/v1/similar", json={"index": "brand", "image": base64.b64encode(png.getvalue()).decode()})
    assert answer.status_code == 400 and "holds no image vectors" in answer.json()["error"]


def test_predict_gives_an_interval_and_neighbours_from_earlier_tweets(client: TestClient, tweets: list[dict]) -> None:
    account = _tweet_with_text(tweets)["username"]
    p = client.post("/v1/predict", json={"index": "brand", "text": "big news today", "username": account}).json()
    low, high = p["interval_80"]
    assert low <= p["likes"] <= high and p["prior"]["source"] == "account"
    assert abs(sum(n["weight"] for n in p["neighbours"]) - 1) < 1e-3
    first = min(t["date"] for t in tweets if t["date"])
    early = client.post(
        "/v1/predict", json={"index": "brand", "text": "x", "username": account, "date": first.isoformat()}
    )
    assert early.status_code == 400 and "no tweets with likes before" in early.json()["error"]
    assert early.json()["detail"]["hint"] == "date"
    empty = client.post("/v1/predict", json={"index": "brand", "text": "", "username": account})
    assert empty.status_code == 422 and empty.json()["error"].startswith("text:")


def test_token_is_required_on_v1_and_compared_whole(index_path: Path) -> None:
    client = TestClient(create_app([ServedIndex(index_path, embedder=HashEmbedder())], token="s3cret"))
    assert client.get("/v1/indexes").status_code == 401
    wrong = client.get("/v1/indexes", headers={"Authorization": "Bearer s3cre"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert "token" in wrong.json()["error"]
    assert client.get("/v1/indexes", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"} and client.get("/").status_code == 200


def test_an_add_is_served_without_a_restart(tmp_path: Path, index_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served_module, "RECHECK_S", 0.0)
    copy = tmp_path / "brand"
    shutil.copytree(index_path, copy)
    client = TestClient(create_app([ServedIndex(copy, embedder=HashEmbedder())]))
    more = pq.read_table(LABELLED).slice(400, 50)
    pq.write_table(more, tmp_path / "more.parquet")
    text = next(t for t in more.column("content").to_pylist() if t)
    before = client.post("/v1/similar", json={"index": "brand", "text": text, "k": 1}).json()
    add_to_index(tmp_path / "more.parquet", copy, embedder=HashEmbedder(), progress=False)
    after = client.post("/v1/similar", json={"index": "brand", "text": text, "k": 1}).json()
    assert before["version"] == 1 and before["hits"][0]["content"] != text
    assert after["version"] == 2 and after["hits"][0]["content"] == text
    assert client.get("/v1/indexes/brand").json()["rows"] == 450


def test_concurrent_searches_agree_with_one_at_a_time(client: TestClient, tweets: list[dict]) -> None:
    texts = [t["content"] for t in tweets if t["content"]][:40]

    def ask(text: str) -> list[int]:
        answer = client.post("/v1/similar", json={"index": "brand", "text": text, "k": 5, "filters": {"min_likes": 1}})
        assert answer.status_code == 200, answer.text
        return [h["vec_id"] for h in answer.json()["hits"]]

    alone = [ask(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, texts))
    assert together == alone


class SlowGenerator:
    """Holds the model for as long as the test says, to fill the queue."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()


def test_a_full_model_queue_answers_503_and_searches_still_run(index_path: Path, tweets: list[dict]) -> None:
    model = ModelQueue(SlowGenerator(), max_waiting=0, timeout=0.1)
    client = TestClient(create_app([ServedIndex(index_path, embedder=HashEmbedder())], model=model))
    account = _tweet_with_text(tweets)["username"]
    with model.turn():  # a generation is running
        busy = client.post("/v1/generate", json={"index": "brand", "username": account})
        assert busy.status_code == 503 and busy.headers["retry-after"] and "busy" in busy.json()["error"]
        # the model lock is held for the whole block: a search that waited for it would never return
        assert client.post("/v1/similar", json={"index": "brand", "text": "news"}).status_code == 200
    no_model = TestClient(create_app([ServedIndex(index_path, embedder=HashEmbedder())]))
    assert no_model.post("/v1/generate", json={"index": "brand", "username": account}).status_code == 503


def test_generate_streams_tokens_then_the_ranked_result(index_path: Path, tweets: list[dict]) -> None:
    pytest.importorskip("llama_cpp")
    from retrieval.tasks.generate.llm import Generator

    model = ModelQueue(Generator("smollm2"))
    client = TestClient(create_app([ServedIndex(index_path, embedder=HashEmbedder())], model=model))
    account = _tweet_with_text(tweets)["username"]
    body = {"index": "brand", "username": account, "media": "a photo", "max_tokens": 24, "candidates": 1}
    plain = client.post("/v1/generate", json=body).json()
    assert plain["model"] and len(plain["candidates"]) == 1 and plain["candidates"][0]["exemplars"]
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [block for block in answer.read().decode().split("\n\n") if block]
    kinds = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert kinds[-1] == "result" and "token" in kinds and "error" not in kinds
    result = json.loads(events[-1].split("\n")[1].removeprefix("data: "))
    assert result["candidates"][0]["text"] and result["candidates"][0]["exemplars"]


def test_openapi_schema_and_page(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/similar", "/v1/predict", "/v1/generate", "/v1/indexes", "/v1/tweets/{index}/{tweet_id}"} <= set(
        schema["paths"]
    )
    page = client.get("/")
    assert page.status_code == 200 and "Find similar past tweets" in page.text
    assert client.get("/static/app.js").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen | None = None, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if json.load(r)["ready"]:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} not ready in {seconds} s")


def test_serve_over_real_http_and_refuses_an_open_host_without_token(minilm_index: Path, tmp_path: Path) -> None:
    """`cli.py serve` as a user starts it (real MiniLM, no language model), over real HTTP."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    serve = [sys.executable, str(ROOT / "cli.py"), "serve", "--index", str(minilm_index), "--no-llm"]
    open_host = subprocess.run([*serve, "--host", "0.0.0.0"], capture_output=True, text=True, env=env, timeout=120)
    assert open_host.returncode == 1 and "give --token" in open_host.stderr
    port = _free_port()
    (tmp_path / "token").write_text("t0ken\n")
    command = [*serve, "--port", str(port), "--token-file", str(tmp_path / "token")]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc)
        request = urllib.request.Request(
            url + "/v1/similar",
            data=json.dumps({"index": minilm_index.name, "text": "formula one race", "k": 3}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer t0ken"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            hits = json.load(r)["hits"]
        assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
        request.remove_header("Authorization")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"open http://127.0.0.1:{port}/" in proc.stderr.read()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (./setup.sh installs it with apt-get)")
def test_the_page_in_a_real_browser(index_path: Path, tweets: list[dict], tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    import uvicorn

    app = create_app([ServedIndex(index_path, embedder=HashEmbedder())])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    tweet = next(t for t in tweets if t["content"] and t["username"] and "\n" not in t["content"])  # one line
    try:
        _wait_ready(f"http://127.0.0.1:{server.config.port}", seconds=30)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{server.config.port}/")
            page.fill("#query", tweet["content"])
            page.click("#search-form button[type=submit]")
            page.wait_for_selector("#results li")
            assert tweet["content"][:30] in page.inner_text("#results li:first-child")
            assert "similar tweets" in page.inner_text("#search-status")
            page.click("#results li:first-child .more")
            page.wait_for_function("document.querySelector('#search-status').textContent.includes('tweets like')")
            assert page.locator("#results li").count() == 10
            page.fill("#draft-text", "big news for our fans")
            page.fill("#draft-username", tweet["username"])
            page.click("#draft-form button[type=submit]")
            page.wait_for_selector("#prediction:not([hidden])")
            assert page.inner_text("#pred-likes").strip() and page.locator("#neighbours li").count() > 0
            page.fill("#draft-username", "x")
            page.fill("#draft-date", "1990-01-01")
            page.click("#draft-form button[type=submit]")
            page.wait_for_selector("#draft-status.error")
            assert "no tweets with likes before" in page.inner_text("#draft-status")
            from PIL import Image

            Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
            page.set_input_files("#image-query", str(tmp_path / "red.png"))
            page.wait_for_function("document.querySelector('#search-status').textContent.includes('holds no image')")
            assert "Search failed" in page.inner_text("#search-status"), "a text-only index says why, in words"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_query_cache_gives_the_same_vectors_and_forgets_the_oldest() -> None:
    class Counting(HashEmbedder):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def encode(self, texts, *, progress=False):
            self.seen += list(texts)
            return super().encode(texts)

    inner = Counting()
    cache = served_module.QueryCache(inner, size=2)
    for text in ("a", "b", "a", "c", "b", "a"):
        assert (cache.encode([text]) == HashEmbedder().encode([text])).all()
    assert inner.seen == ["a", "b", "c", "b", "a"], "the second a was remembered; b, then a, had been forgotten"
    assert cache.encode(["a", "b"]).shape == (2, inner.dim) and inner.seen[-2:] == ["a", "b"]


def test_keyword_and_hybrid_modes_over_http(client: TestClient, tweets: list[dict]) -> None:
    tweet = _tweet_with_text(tweets)
    for mode in ("keyword", "hybrid"):
        hits = client.post("/v1/similar", json={"index": "brand", "text": tweet["content"], "k": 3, "mode": mode})
        assert hits.status_code == 200, hits.text
        assert hits.json()["hits"][0]["found_by"].get("keyword") == 1
    empty = client.post("/v1/similar", json={"index": "brand", "text": "?!", "mode": "keyword"})
    assert empty.status_code == 400 and "no words" in empty.json()["error"]
    assert client.post("/v1/similar", json={"index": "brand", "text": "x", "mode": "magic"}).status_code == 422


def test_a_chunked_body_is_counted_and_odd_values_are_refused(client: TestClient) -> None:
    def chunks():
        for _ in range(20):
            yield b" " * 2**20

    streamed = client.post("/v1/similar", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    comma = client.post("/v1/similar", json={"index": "brand", "image": "data:image/png;base64"})
    assert comma.status_code == 400 and "cannot be used" in comma.json()["error"]
    for body in ({"index": "brand", "id": 2**70}, {"index": "brand", "text": "x", "filters": {"min_likes": 2**70}}):
        assert client.post("/v1/similar", json=body).status_code == 422
    assert client.get(f"/v1/tweets/brand/{2**70}").status_code == 422


def test_a_damaged_new_version_leaves_the_open_one_answering(
    tmp_path: Path, index_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(served_module, "RECHECK_S", 0.0)
    copy = tmp_path / "brand"
    shutil.copytree(index_path, copy)
    client = TestClient(create_app([ServedIndex(copy, embedder=HashEmbedder())]))
    (copy / "manifest.json").write_text("{ not json")
    answer = client.post("/v1/similar", json={"index": "brand", "text": "news", "k": 2})
    assert answer.status_code == 200 and answer.json()["version"] == 1


def test_an_empty_token_file_refuses_to_start(index_path: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from retrieval.apps.cli import cli

    (tmp_path / "token").write_text("\n")
    result = CliRunner().invoke(cli, ["serve", "--index", str(index_path), "--token-file", str(tmp_path / "token")])
    assert result.exit_code == 1 and "empty" in result.output
    missing = CliRunner().invoke(cli, ["serve", "--index", str(index_path), "--token-file", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_ranking_threshold_and_explain_over_http(client: TestClient, tweets: list[dict]) -> None:
    text = _tweet_with_text(tweets)["content"]
    body = {"index": "brand", "text": text, "k": 8}
    ranked = client.post("/v1/similar", json=body | {"rank": "engagement"}).json()
    relative = [h["factors"]["relative_likes"] for h in ranked["hits"]]
    assert len(relative) == 8 and relative == sorted(relative, reverse=True)
    floor = client.post("/v1/similar", json=body | {"collapse": None}).json()["hits"][3]["score"]
    above = client.post("/v1/similar", json=body | {"k": 100, "min_score": floor}).json()
    assert above["hits"] and all(h["score"] >= floor for h in above["hits"])
    explained = client.post("/v1/similar", json=body | {"explain": True}).json()["explain"]
    assert explained["path"] == "exact" and explained["admitted"] == explained["total"]
    wrong = client.post("/v1/similar", json=body | {"half_life_days": 30})
    assert wrong.status_code == 400 and "blend" in wrong.json()["error"]
    assert client.post("/v1/similar", json=body | {"collapse": 1.5}).status_code == 422
    assert (
        client.post("/v1/similar", json={"index": "brand", "id": tweets[7]["id"], "min_score": 0.5}).status_code == 400
    )


def test_profiles_recommendations_and_audiences_over_http(client: TestClient, tweets: list[dict], index_path) -> None:
    liked = [t["id"] for t in tweets if t["content"] and t["id"] is not None][:5]
    try:
        made = client.post("/v1/profiles", json={"index": "brand", "name": "fan", "liked": liked})
        assert made.status_code == 200, made.text
        assert made.json()["liked"] == liked and made.json()["interests"]
        assert [p["name"] for p in client.get("/v1/profiles/brand").json()] == ["fan"]
        found = client.post("/v1/recommend", json={"index": "brand", "name": "fan", "k": 4}).json()
        assert len(found["recommendations"]) == 4
        assert not {r["id"] for r in found["recommendations"]} & set(liked)
        fits = client.post("/v1/audience", json={"index": "brand", "id": liked[0]}).json()["fits"]
        assert fits[0]["profile"] == "fan"
        assert client.post("/v1/recommend", json={"index": "brand", "name": "ghost"}).status_code == 404
        bad = client.post("/v1/profiles", json={"index": "brand", "name": "x", "liked": [987654321]})
        assert bad.status_code == 400 and "987654321" in bad.json()["error"]
        assert client.delete("/v1/profiles/brand/fan").json() == {"deleted": "fan"}
        assert client.get("/v1/profiles/brand/fan").status_code == 404
    finally:
        (index_path.parent / "brand.profiles.parquet").unlink(missing_ok=True)
