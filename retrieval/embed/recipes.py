"""Choose the int8 recipe on the machine itself: the fastest one whose vectors agree with fp32.

The same quantized model is exact on one CPU and off on another (u8 x s8 saturates on x86 without
VNNI), so no recipe is fixed in advance. Once per model and CPU feature set (retrieval/embed/cpu.py)
every candidate of onnx_int8.RECIPES is built, run beside the fp32 export on check texts (the
calibration sentences plus check_texts()), and kept only if it passes CHECK_BARS; the fastest
that passes wins, and the fp32 export itself is the fallback when none passes or none is faster.
The record (recipe, CPU features, every candidate's figures) is written next to the model and
copied into each index manifest.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed.check_texts import check_texts
from retrieval.embed.cpu import cpu_features, cpu_key
from retrieval.embed.int8 import RECIPES, Feed, calibrate, quantize_int8

log = logging.getLogger(__name__)

CHECK_BARS = {"mean_cosine": 0.9988, "min_cosine": 0.99, "neighbour_agreement": 0.97}
"""Set so that passing here means passing the bars of issue #6 on real tweets (mean cosine 0.99,
top-10 agreement 0.95). The check texts are sparser than real tweets, so agreement is easier here
(0.98 where real tweets gave 0.944), but the mean cosine carries over (0.99837 here, 0.99799 on
1,000 real tweets), and real tweets reach agreement 0.95 from a mean cosine of about 0.9988
(docs/benchmarks.md, MPNet, seven recipes)."""
FP32 = "fp32"
CHUNK = 32

Session = Any  # onnxruntime.InferenceSession
Embed = Callable[[Session, Sequence[str]], np.ndarray]
Encode = Callable[[list[str]], np.ndarray]
Timings = tuple[dict[str, np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class Check:
    """One candidate measured against the fp32 export on this machine's check texts."""

    recipe: str
    mean_cosine: float
    min_cosine: float
    neighbour_agreement: float
    texts_per_s: float
    speedup: float
    passed: bool


@dataclass(frozen=True)
class Choice:
    """What was chosen on this machine and why: stored beside the model as JSON."""

    recipe: str
    cpu_key: str
    cpu_features: list[str]
    checks: list[Check]
    check_texts: int

    def record(self) -> dict[str, Any]:
        """The short form an index manifest keeps."""
        chosen = next(c for c in self.checks if c.recipe == self.recipe)
        return {
            "recipe": self.recipe,
            "cpu_key": self.cpu_key,
            "cpu_features": self.cpu_features,
            "check": {k: v for k, v in asdict(chosen).items() if k != "recipe"},
        }


def read_choice(path: Path) -> Choice | None:
    """The choice stored at `path`, or None when absent or unreadable (then it is made again)."""
    try:
        data = json.loads(path.read_text())
        return Choice(**{**data, "checks": [Check(**c) for c in data["checks"]]})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """Share of each text's reference top-k (itself left out) that the other top-k also holds."""
    k = min(k, len(reference) - 1)

    def top(x: np.ndarray) -> np.ndarray:
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    ref, got = top(reference), top(other)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, got)]))


def measure(reference: np.ndarray, vectors: np.ndarray, recipe: str, rate: float, fp32_rate: float) -> Check:
    cos = (reference * vectors).sum(axis=1)
    figures = {
        "mean_cosine": round(float(cos.mean()), 5),
        "min_cosine": round(float(cos.min()), 5),
        "neighbour_agreement": round(agreement(reference, vectors), 4),
    }
    passed = all(figures[key] >= bar for key, bar in CHECK_BARS.items())
    return Check(recipe, **figures, texts_per_s=round(rate, 1), speedup=round(rate / fp32_rate, 2), passed=passed)


def take_turns(encoders: dict[str, Encode], texts: list[str], chunk: int, repeats: int = 1) -> Timings:
    """Vectors and texts/s of each encoder. The encoders take turns on chunks of the texts, so a
    change in the machine's load hits all of them alike (the cores may be shared)."""
    for encode in encoders.values():
        encode(texts[:8])
    seconds = dict.fromkeys(encoders, 0.0)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    for _ in range(repeats):
        for name in encoders:
            parts[name] = []
        for start in range(0, len(texts), chunk):
            for name, encode in encoders.items():
                began = time.perf_counter()
                parts[name].append(np.asarray(encode(texts[start : start + chunk]), dtype=np.float32))
                seconds[name] += time.perf_counter() - began
    vectors = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return vectors, {name: repeats * len(texts) / seconds[name] for name in encoders}


def choose_recipe(
    fp32: Path,
    reference: Session,
    target: Path,
    feeds: list[Feed],
    texts: Sequence[str],
    open_session: Callable[[Path], Session],
    embed: Embed,
    *,
    alpha: float,
    block: int,
) -> Choice:
    """Build every candidate next to `target`, keep the fastest that passes as `target` (or none,
    when the fp32 export, whose session is `reference`, wins) and its record as `target` with a
    .json suffix; atomic."""
    texts = [*texts, *check_texts(200)]
    log.warning("choosing the int8 recipe for this CPU (once): %d candidates on %d texts", len(RECIPES), len(texts))
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        paths = {FP32: fp32}
        amax = calibrate(fp32, feeds)
        for recipe in RECIPES:
            paths[recipe.name] = Path(tmp) / f"{recipe.name}.onnx"
            quantize_int8(fp32, paths[recipe.name], amax, recipe, alpha=alpha, block=block)
        sessions = {FP32: reference} | {name: open_session(paths[name]) for name in paths if name != FP32}
        encoders = {name: (lambda t, s=session: embed(s, t)) for name, session in sessions.items()}
        vectors, rates = take_turns(encoders, list(texts), CHUNK)
        del sessions, encoders
        checks = [measure(vectors[FP32], vectors[n], n, rates[n], rates[FP32]) for n in paths]
        best = max((c for c in checks if c.passed), key=lambda c: c.texts_per_s)
        choice = Choice(best.recipe, cpu_key(), list(cpu_features()), checks, len(texts))
        if best.recipe != FP32:
            os.replace(paths[best.recipe], target)
        record = Path(tmp) / "choice.json"
        record.write_text(json.dumps(asdict(choice), indent=1))
        os.replace(record, target.with_suffix(".json"))
    for check in checks:
        log.warning(
            "  %-9s cosine mean %.5f min %.5f, agreement %.3f, %.2fx fp32 export%s",
            check.recipe, check.mean_cosine, check.min_cosine, check.neighbour_agreement, check.speedup,
            "" if check.passed else " (fails)",
        )  # fmt: skip
    log.warning("chosen for this CPU: %s", best.recipe)
    return choice
