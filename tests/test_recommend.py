"""Profiles, interests, recommendations and audiences on real behaviour tweets (MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from retrieval.apps.cli.main import cli
from retrieval.errors import RetrievalError
from retrieval.evaluation.recommend import eval_recommend
from retrieval.index import profiles as profiles_module
from retrieval.index.profiles import Profile, ProfileStore
from retrieval.query.search import Searcher
from retrieval.tasks.recommend.interests import interests
from retrieval.tasks.recommend.recommend import add_to_profile, audience, recommend


@pytest.fixture()
def index(tmp_path: Path, minilm_index: Path) -> Path:
    """The 600-tweet index under a fresh name, so its profiles file is this test's own."""
    (tmp_path / "brand").symlink_to(minilm_index, target_is_directory=True)
    return tmp_path / "brand"


@pytest.fixture(scope="module")
def tweets(sample_parquet: Path) -> list[dict]:
    return pq.read_table(sample_parquet).to_pylist()


@pytest.fixture()
def searcher(index: Path, minilm) -> Searcher:
    return Searcher.open(index, embedder=minilm)


def _of(tweets: list[dict], account: str, n: int) -> list[int]:
    return [t["id"] for t in tweets if t["username"] == account and t["content"]][:n]


def test_interests_are_phrases_of_the_texts_without_placeholders(tweets: list[dict]) -> None:
    texts = [t["content"] for t in tweets if t["username"] == "redbullracing"][:15]
    found = interests(texts)
    assert 3 <= len(found) <= 10 and found[0][1] == 1.0
    assert all(0 < w <= 1 for _, w in found) and [w for _, w in found] == sorted((w for _, w in found), reverse=True)
    assert not any("hyperlink" in p or "mention" in p for p, _ in found)
    joined = " ".join(texts).lower()
    assert all(word in joined for p, _ in found for word in p.split())


def test_profiles_are_added_extended_and_deleted(searcher: Searcher, index: Path, tweets: list[dict]) -> None:
    store = ProfileStore(index)
    first = add_to_profile(searcher, store, "fan", _of(tweets, "redbullracing", 3))
    grown = add_to_profile(searcher, store, "fan", _of(tweets, "redbullracing", 5), ["pit stop strategy"])
    assert len(grown.liked) == 5 and grown.texts == ("pit stop strategy",) and grown.created_at == first.created_at
    assert store.get("fan") == grown and [p.name for p in store.all()] == ["fan"]
    assert store.path == index.parent / "brand.profiles.parquet"
    with pytest.raises(RetrievalError, match="no tweet with id 987654321"):
        add_to_profile(searcher, store, "fan", [987654321])
    with pytest.raises(RetrievalError, match="nothing to add"):
        add_to_profile(searcher, store, "empty")
    store.delete("fan")
    with pytest.raises(RetrievalError, match="no profile 'fan'"):
        store.get("fan")


def test_a_failed_write_leaves_the_old_profiles_file(
    searcher: Searcher, index: Path, tweets: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ProfileStore(index)
    add_to_profile(searcher, store, "fan", _of(tweets, "redbullracing", 2))
    before = store.path.read_bytes()

    def dies(table, where):
        Path(where).write_bytes(b"half a file")
        raise KeyboardInterrupt  # as a kill would stop it: mid-write, before the rename

    monkeypatch.setattr(profiles_module.pq, "write_table", dies)
    with pytest.raises(KeyboardInterrupt):
        add_to_profile(searcher, store, "other", _of(tweets, "EuroLeague", 2))
    assert store.path.read_bytes() == before
    assert [p.name for p in store.all()] == ["fan"]
    assert not list(index.parent.glob(".*.tmp"))


def test_recommendations_skip_what_was_liked_and_come_from_both_interests(
    searcher: Searcher, tweets: list[dict]
) -> None:
    f1, e1 = _of(tweets, "redbullracing", 4), _of(tweets, "EuroLeague", 4)
    person = Profile("two sides", tuple(f1 + e1))
    found = recommend(searcher, person, 10)
    assert len(found) == 10 and [r.rank for r in found] == list(range(1, 11))
    assert not {r.tweet["tweet_id"] for r in found} & set(person.liked)
    assert {r.tweet["username"] for r in found} >= {"redbullracing", "EuroLeague"}, "both interests come up"
    assert all(r.because.startswith("liked #") for r in found)
    vectors = searcher.reader.text_vectors(np.array([r.tweet["vec_id"] for r in found]))
    sims = vectors @ vectors.T
    assert (sims[np.triu_indices(len(found), 1)] < 0.95).all(), "no near-copies on the page"
    with pytest.raises(RetrievalError, match="is empty"):
        recommend(searcher, Profile("nobody"))


def test_audience_ranks_the_profile_the_post_fits(searcher: Searcher, tweets: list[dict]) -> None:
    racing = Profile("racing", tuple(_of(tweets, "redbullracing", 6)))
    basket = Profile("basketball", tuple(_of(tweets, "EuroLeague", 6)))
    post = next(t["content"] for t in tweets if t["username"] == "EuroLeague" and t["id"] not in basket.liked)
    fits = audience(searcher, [racing, basket], post)
    assert [f.profile for f in fits] == ["basketball", "racing"] and fits[0].score > fits[1].score


def test_eval_recommend_beats_the_popular_baseline(searcher: Searcher) -> None:
    result = eval_recommend(searcher, limit=10, min_tweets=12, progress=False)
    assert set(result["baselines"]) == {"mean_vector", "popular"} and result["profiles"] >= 3
    assert set(result["recommend"]) == {"hit_rate_at_10", "ndcg_at_10"}
    assert result["recommend"]["hit_rate_at_10"] > result["baselines"]["popular"]["hit_rate_at_10"]


def test_cli_profile_recommend_audience(index: Path, tweets: list[dict]) -> None:
    runner = CliRunner()
    liked = ",".join(map(str, _of(tweets, "redbullracing", 4)))
    added = runner.invoke(cli, ["profile", "add", "fan", "--liked", liked, "--index", str(index)])
    assert added.exit_code == 0, added.output
    assert "interests:" in added.output
    listed = runner.invoke(cli, ["profile", "list", "--index", str(index), "--json"])
    assert [p["name"] for p in json.loads(listed.output)] == ["fan"]
    shown = runner.invoke(cli, ["recommend", "fan", "--index", str(index), "-k", "3", "--json"])
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.output)) == 3
    fits = runner.invoke(cli, ["audience", "race weekend on the track", "--index", str(index), "--json"])
    assert json.loads(fits.output)[0]["profile"] == "fan"
    for args, message in [
        (["recommend", "ghost"], "no profile 'ghost'"),
        (["profile", "add", "x", "--liked", "1,a"], "comma-separated"),
        (["profile", "delete", "ghost"], "no profile 'ghost'"),
    ]:
        bad = runner.invoke(cli, [*args, "--index", str(index)])
        assert bad.exit_code in (1, 2) and message in bad.output and "Traceback" not in bad.output


def test_kill_9_during_a_write_leaves_the_old_profiles_file(
    searcher: Searcher, index: Path, tweets: list[dict]
) -> None:
    """A real SIGKILL while the new file is half written: the old one is still whole."""
    import signal
    import subprocess
    import sys

    store = ProfileStore(index)
    add_to_profile(searcher, store, "fan", _of(tweets, "redbullracing", 2))
    before = store.path.read_bytes()
    script = f"""
import time
from pathlib import Path
from retrieval.index import profiles
from retrieval.index.profiles import Profile, ProfileStore

def stalls(table, where):
    Path(where).write_bytes(b"half a file")
    print("writing", flush=True)
    time.sleep(60)

profiles.pq.write_table = stalls
ProfileStore({str(index)!r}).put(Profile("other", (1,)))
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        child.kill()
    assert store.path.read_bytes() == before and [p.name for p in store.all()] == ["fan"]


def test_an_image_adds_its_labels_as_interests_and_as_a_query(
    index: Path, tweets: list[dict], clip_checkpoint: Path, image_folder: Path
) -> None:
    runner = CliRunner()
    args = ["profile", "add", "visual", "--image", str(image_folder / "img1.png"), "--index", str(index)]
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 1 and "--clip-checkpoint" in refused.output and "Traceback" not in refused.output
    added = runner.invoke(cli, [*args, "--clip-checkpoint", str(clip_checkpoint), "--clip-model", "ViT-S-32", "--json"])
    assert added.exit_code == 0, added.output
    profile = json.loads(added.output)
    (image,) = profile["images"]
    labels = [lb["label"] for lb in image["labels"]]
    assert image["source"].endswith("img1.png") and len(labels) == 5
    assert labels[0] in [i["phrase"] for i in profile["interests"]]
    shown = runner.invoke(cli, ["recommend", "visual", "--index", str(index), "-k", "3", "--json"])
    assert shown.exit_code == 0, shown.output
    assert all(r["because"].startswith("image img1.png") for r in json.loads(shown.output))
