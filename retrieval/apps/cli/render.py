"""How results look in a terminal: tables cut to its width, and JSON for --json."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import click


def dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def width() -> int:
    return shutil.get_terminal_size((120, 20)).columns


def cut(text: str | None, room: int) -> str:
    """Text on one line, cut with an ellipsis to fit `room` characters."""
    text = " ".join((text or "").split())
    return text if len(text) <= room else text[: max(0, room - 1)] + "…"


def shown_text(tweet: Mapping[str, Any]) -> str:
    """A tweet's text or, for a tweet without text, its media files or URLs."""
    if tweet.get("content"):
        return tweet["content"]
    from retrieval.schema import stored_media  # pyarrow: not for a command that prints no tweet

    return " ".join(str(m.get("url") or m.get("thumbnail")) for m in stored_media(tweet.get("media"))) or "-"


def day(when: Any) -> str:
    return when.strftime("%Y-%m-%d") if when else "-"


def hits(found: Sequence[Any], why_none: str | None = None) -> None:
    """`similar`: one line per hit, best first, with its id (what `--id` and `profile add --liked`
    take), the factors that placed it and the ids of the near-copies folded into it on a line
    below; `why_none` says why there is none."""
    if not found:
        click.echo(f"no tweets match: {why_none}" if why_none else "no tweets match")
        return
    sides = any(h.found_by for h in found)
    placed = any(h.factors for h in found)
    column = f"{'found by':11} " if sides else ""
    column += f"{'factors':24} " if placed else ""
    ids = max(len(str(h.id)) for h in found)
    click.echo(f"{'#':>3} {'score':>6} {'id':>{ids}} {column}{'date':10} {'account':18} {'likes':>7}  text")
    for h in found:
        t = h.tweet
        likes = "-" if t["likes"] is None else str(t["likes"])
        by = " ".join(f"{side[0]}{rank}" for side, rank in sorted(h.found_by.items(), reverse=True))
        head = f"{h.rank:>3} {h.score:6.3f} {h.id:>{ids}} " + (f"{by:11} " if sides else "")
        head += f"{factors(h.factors):24} " if placed else ""
        head += f"{day(t['date']):10} {cut(t['username'] or '-', 18):18} {likes:>7}  "
        click.echo(head + cut(shown_text(t), width() - len(head)))
        if h.near_copies:
            copies = f"{len(h.near_copies)} near-cop{'y' if len(h.near_copies) == 1 else 'ies'}: "
            indent = 12 + ids
            click.echo(" " * indent + cut("+ " + copies + ", ".join(map(str, h.near_copies)), width() - indent))


def factors(found: Mapping[str, float]) -> str:
    """x relative likes (of the account's usual), then blend's engagement and decay factors."""
    parts = []
    if "relative_likes" in found:
        parts.append(f"x{found['relative_likes']:.2g} of {found['typical_likes']:,.0f}")
    if "engagement" in found:
        parts.append(f"e{found['engagement']:.2f}")
    if "age_days" in found:
        parts.append(f"d{found['decay']:.2f}")
    return " ".join(parts) or "-"


def duplicates(found: Any, show: int) -> None:
    """`dedup`: the counts, then the largest groups with their best performer's text."""
    share = found.removable / found.vectors if found.vectors else 0.0
    click.echo(f"{found.vectors} tweets with text, near-copies at cosine >= {found.threshold}")
    click.echo(
        f"{found.groups} groups hold {found.in_groups} tweets; one per group would drop {found.removable} ({share:.1%})"
    )
    click.echo(
        f"verbatim duplicates: {found.verbatim_texts} texts occur more than once, "
        f"{found.verbatim_in_one_group} of them with every copy in one group"
    )
    if largest := found.largest(show):
        click.echo(f"{'group':>5} {'size':>5} {'best id':>10} {'account':18}  text")
        for g in largest:
            best = g["id"] if g["id"] is not None else g["vec_id"]
            head = f"{g['group']:>5} {g['size']:>5} {best:>10} {cut(g['username'] or '-', 18):18}  "
            click.echo(head + cut(g["content"], width() - len(head)))


def profile(found: Any) -> None:
    """`profile add` / `show`: the profile's size, interests with weights, liked ids and texts."""
    click.echo(
        f"profile {found.name}: {len(found.liked)} liked tweets, {len(found.texts)} texts (updated {found.updated_at})"
    )
    click.echo("interests: " + (", ".join(f"{p} ({w:.2f})" for p, w in found.interests) or "-"))
    if found.liked:
        click.echo("liked: " + cut(", ".join(map(str, found.liked)), width() - 7))
    for t in found.texts:
        click.echo("text: " + cut(t, width() - 6))
    for source, labels in found.images:
        click.echo("image: " + cut(f"{source}: " + ", ".join(label for label, _ in labels), width() - 7))


def recommendations(found: Sequence[Any]) -> None:
    """`recommend`: one line per tweet, then what made it come up."""
    if not found:
        click.echo("nothing to recommend: every match is already liked, or the filters admit none")
        return
    click.echo(f"{'#':>3} {'score':>6} {'eng':>5} {'date':10} {'account':18} {'likes':>7}  text")
    for r in found:
        t = r.tweet
        likes = "-" if t["likes"] is None else str(t["likes"])
        head = f"{r.rank:>3} {r.relevance:6.3f} {r.engagement:5.2f} {day(t['date']):10} "
        head += f"{cut(t['username'] or '-', 18):18} {likes:>7}  "
        click.echo(head + cut(shown_text(t), width() - len(head)))
        why = f"because {r.because}" + (f"; interests: {', '.join(r.interests)}" if r.interests else "")
        click.echo(" " * 11 + cut(why, width() - 11))


def prediction(found: Any, username: str, show: int) -> None:
    """`predict`: estimate and interval, where the prior came from, and the neighbours by weight."""
    prior = found.prior
    where = {
        "account": f"account {username} ({prior.account_tweets} tweets)",
        "company": f"company {prior.company} ({prior.company_tweets} tweets; {username} has none)",
        "base": f"tweets like it ({username} and its company have none)",
    }[prior.source]
    click.echo(f"likes     {found.likes:,.0f}  (80% interval {found.low:,.0f} .. {found.high:,.0f})")
    click.echo(
        f"prior     {math.expm1(prior.value):,.0f} likes from {where}; similar tweets {found.adjustment:+.2f} log1p"
    )
    if not found.neighbours:
        click.echo("no earlier tweets with text to compare with")
        return
    click.echo(f"{'weight':>6} {'score':>6} {'space':5} {'date':10} {'account':18} {'likes':>7}  text")
    for n in found.neighbours[:show]:
        t = n.tweet
        account = cut(t.get("username") or "-", 18)
        head = f"{n.weight:6.3f} {n.score:6.3f} {n.space:5} {day(t.get('date')):10} {account:18} {n.likes:>7}  "
        click.echo(head + cut(shown_text(t), width() - len(head)))
    if rest := found.neighbours[show:]:
        click.echo(f"(+{len(rest)} more neighbours, weight {sum(n.weight for n in rest):.3f})")


def candidates(found: Sequence[Any], method: str | None) -> None:
    """`generate`: the drafts best first, then the past tweets the best one was built from."""
    ranked = f", best first by {method.replace('_', ' ')}" if method else ""
    written = sum(c.seconds for c in found)
    click.echo(f"{len(found)} candidate{'s' * (len(found) != 1)}{ranked}; written in {written:.1f}s")
    for i, c in enumerate(found, 1):
        likes_text = f"  predicted likes {c.predicted_likes:,.0f}" if c.predicted_likes is not None else ""
        click.echo(f"\n#{i} (seed {c.seed}, {c.tokens} tokens){likes_text}")
        click.echo(c.text or "(the model returned no usable text)")
        if c.nearest is not None:
            copy = "NEAR-COPY of" if c.near_copy else "nearest past tweet"
            voice = f"; brand voice {c.brand_voice:.2f}" if c.brand_voice is not None else ""
            tweet = c.nearest.tweet_id if c.nearest.tweet_id is not None else c.nearest.vec_id
            click.echo(f"  {copy} {tweet} (cosine {c.nearest.similarity:.2f}){voice}")
    if not found or not found[0].exemplars:
        click.echo("\nno past tweets found: generated from the brief alone")
        return
    click.echo(f"\nbuilt from {len(found[0].exemplars)} past tweets:")
    click.echo(f"{'id':>8} {'level':8} {'account':18} {'likes':>7}  text")
    for e in found[0].exemplars:
        tweet_id = e.tweet_id if e.tweet_id is not None else e.vec_id
        likes_cell = "-" if e.likes is None else e.likes
        head = f"{tweet_id:>8} {e.level:8} {cut(e.username or '-', 18):18} {likes_cell:>7}  "
        click.echo(head + cut(e.content, width() - len(head)))


def vector_sets(out: Any, manifest: Any) -> None:
    """`index build`: one line per vector set built."""
    for name, vset in manifest.sets().items():
        if vset.shards:
            click.echo(
                f"{out} {name}: {vset.factory}, {len(vset.shards)} shard(s), nprobe {vset.nprobe}, "
                f"10-recall@10 {vset.recall_at_10:.3f}"
            )


def index_info(manifest: Any, table: Mapping[str, Any]) -> None:
    """`index info`: the index's facts and its text set's, the image set's, each with its shards,
    then the table's counts."""
    text = manifest.text
    facts = {"version": manifest.version, "embedder": _model(text.embedder), "factory": text.factory}
    facts |= {"metric": manifest.metric, **_set_facts(text), "next_id": manifest.next_id}
    facts |= {"built_at": manifest.built_at, **({"updated_at": manifest.updated_at} if manifest.updated_at else {})}
    _facts("", facts, text.shards)
    if manifest.image is not None:
        image = manifest.image
        _facts(
            "image ", {"embedder": _model(image.embedder), "factory": image.factory, **_set_facts(image)}, image.shards
        )
    for label, value in table.items():
        click.echo(f"{label:17} {value}")


def _model(record: Mapping[str, Any]) -> str:
    """A model's record in a line: its name and width, then the rest as key=value (`--json` has it whole)."""
    if not record.get("name"):
        return "none"
    plain = {k: v for k, v in record.items() if k not in ("name", "dim") and not isinstance(v, Mapping | list | tuple)}
    rest = ", ".join(f"{k}={v}" for k, v in plain.items())
    return f"{record['name']} ({record.get('dim')}-d{', ' + rest if rest else ''})"


def _set_facts(vset: Any) -> dict[str, Any]:
    return {"nprobe": vset.nprobe, "recall_at_10": vset.recall_at_10, "bytes_per_vector": vset.bytes_per_vector}


def _facts(prefix: str, facts: Mapping[str, Any], shards: Sequence[Any]) -> None:
    for label, value in facts.items():
        click.echo(f"{prefix + label:17} {value}")
    for s in shards:
        click.echo(f"{prefix + 'shard':17} {s.file}  ids {s.first_id}..{s.last_id}  sha256 {s.sha256[:12]}")


def metrics_table(rows: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], cell: int, fmt: str = "") -> None:
    """Methods down, metrics across."""
    click.echo(f"{'method':16}" + "".join(f"{m:>{cell}}" for m in metrics))
    for name, row in rows.items():
        cells = "".join(f"{'-' if row[m] is None else format(row[m], fmt):>{cell}}" for m in metrics)
        click.echo(f"{name:16}{cells}")


def key_values(result: Mapping[str, Any]) -> None:
    for key, value in result.items():
        click.echo(f"{key:22} {value:.4f}" if isinstance(value, float) else f"{key:22} {value}")


def cache(folder: Any, entries: Sequence[Mapping[str, Any]]) -> None:
    """`cache info`: vectors and MiB per model id, and the total."""
    click.echo(f"folder {folder}")
    for e in entries:
        click.echo(f"{e['model_id']:24} {e['vectors']:>10} vectors {e['bytes'] / 2**20:>9.1f} MiB")
    total = sum(int(e["bytes"]) for e in entries)
    click.echo(f"{'total':24} {sum(int(e['vectors']) for e in entries):>10} vectors {total / 2**20:>9.1f} MiB")
