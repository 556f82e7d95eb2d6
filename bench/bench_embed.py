"""Embedding benchmark: the project's default embedder against plain sentence-transformers fp32.

On --n real tweets (adobe_behaviour_test_time), in one run:
  - texts/s of plain sentence-transformers fp32 (a fresh SentenceTransformer on the local model
    folder, default settings but batch 64: the reference) and of the project's embedder at
    --precision (default: the project's CPU default), plus the ONNX fp32 export (--no-extra skips);
  - cosine between the two embeddings of each text (mean, min);
  - neighbour agreement: the share of each text's fp32 top-10 that the project's top-10 also holds;
  - the embedding cache: texts/s of a second pass over the same texts;
  - the share of the tweets that a 64- and a 128-token limit would truncate;
  - with --recipes, every int8 candidate recipe (retrieval/embed/int8.py: RECIPES) in the same
    turns, each with its own speed and agreement, whichever one this machine chose.
The embedders take turns on chunks of --chunk texts (--repeats passes), so that a change in load
on shared cores hits all of them alike; texts/s is over all their turns.
`--json` prints one object with the keys speedup, mean_cosine, min_cosine, neighbour_agreement;
`passed` says whether the bars of issue #6 hold (speedup >= 3, mean cosine >= 0.99, agreement >= 0.95),
`accurate` whether the two accuracy bars do (what a CPU allows in speed differs: docs/benchmarks.md).
Every line records the CPU (model name and kernel-relevant flags) and the recipe the project chose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from retrieval.embed.cache import CachedEmbedder  # noqa: E402
from retrieval.embed.cpu import cpu_features, cpu_model  # noqa: E402
from retrieval.embed.int8 import RECIPES, calibrate, quantize_int8  # noqa: E402
from retrieval.embed.models import model_path  # noqa: E402
from retrieval.embed.onnx import (  # noqa: E402
    INT8_BLOCK,
    SMOOTHING_ALPHA,
    OnnxEmbedder,
    available_cores,
    calibration_feeds,
    onnx_path,
)
from retrieval.embed.recipes import Encode, take_turns  # noqa: E402
from retrieval.embed.text import default_precision, text_embedder  # noqa: E402
from retrieval.index import faiss_ops as fx  # noqa: E402
from retrieval.io.tweets import load_tweets  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
BARS = {"speedup": 3.0, "mean_cosine": 0.99, "neighbour_agreement": 0.95}


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """Share of each text's reference top-k (itself left out) that the other top-k also holds."""
    _, ref_top = fx.exact_search(reference, reference, k + 1)
    _, other_top = fx.exact_search(other, other, k + 1)
    return fx.recall_at_k(other_top[:, 1:], ref_top[:, 1:], k)


def figures(reference: np.ndarray, other: np.ndarray, speedup: float) -> dict[str, float]:
    cosine = (reference * other).sum(axis=1)
    return {
        "speedup": round(speedup, 2),
        "mean_cosine": round(float(cosine.mean()), 5),
        "min_cosine": round(float(cosine.min()), 5),
        "neighbour_agreement": round(agreement(reference, other), 4),
    }


def recipe_encoders(ours: OnnxEmbedder, folder: Path) -> dict[str, Encode]:
    """Every candidate int8 recipe, quantized into `folder` from the cached fp32 export, run by
    the project's own tokenizing and pooling."""
    fp32 = onnx_path(ours.spec.folder, "fp32")
    amax = calibrate(fp32, calibration_feeds(ours.spec.folder))
    encoders: dict[str, Encode] = {}
    for recipe in RECIPES:
        path = folder / f"{recipe.name}.onnx"
        quantize_int8(fp32, path, amax, recipe, alpha=SMOOTHING_ALPHA, block=INT8_BLOCK)
        session = ours.open_session(path)
        encoders[f"recipe {recipe.name}"] = lambda t, s=session: ours.encode_with(s, t)
    return encoders


def truncated_share(model: str, texts: list[str], limit: int) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path(model) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return float(np.mean([len(e.ids) > limit for e in tokenizer.encode_batch(texts)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="real tweets to embed")
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--precision", default=default_precision("cpu"), choices=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=250, help="texts per turn when the embedders alternate")
    parser.add_argument("--no-extra", action="store_true", help="skip the ONNX fp32 line")
    parser.add_argument("--recipes", action="store_true", help="time and check every int8 candidate recipe too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    texts = load_tweets(SHARED / "adobe_behaviour_test_time.parquet").table.column("content").to_pylist()[: args.n]
    info = {
        "args": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "cpu_features": list(cpu_features()),
        "load_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "threads": threads,
    }
    if not args.json:
        print(json.dumps(info))

    plain = SentenceTransformer(str(model_path(args.model)), device="cpu")
    ours = text_embedder(args.model, precision=args.precision, device="cpu", threads=threads)
    encoders: dict[str, Encode] = {
        "reference": lambda t: plain.encode(t, batch_size=64, normalize_embeddings=True, convert_to_numpy=True),
        "project": ours.encode,
    }
    if not args.no_extra and args.precision != "fp32":
        encoders["onnx_fp32"] = OnnxEmbedder(args.model, precision="fp32", threads=threads).encode
    scratch = tempfile.TemporaryDirectory()
    if args.recipes:
        encoders.update(recipe_encoders(ours, Path(scratch.name)))
    vectors, rates = take_turns(encoders, texts, args.chunk, args.repeats)
    scratch.cleanup()
    reference, fast = vectors["reference"], vectors["project"]
    cosine = (reference * fast).sum(axis=1)

    with tempfile.TemporaryDirectory() as folder:
        cached = CachedEmbedder(ours, ours.model_id, Path(folder))
        cached.encode(texts)
        _, cached_rate = take_turns({"cached": cached.encode}, texts, len(texts))

    result = {
        **info,
        "n": len(texts),
        "reference_texts_per_s": round(rates["reference"], 1),
        "project_texts_per_s": round(rates["project"], 1),
        "onnx_fp32_texts_per_s": round(rates["onnx_fp32"], 1) if "onnx_fp32" in rates else None,
        "cached_texts_per_s": round(cached_rate["cached"], 1),
        "recipe": getattr(ours, "recipe", None),
        "speedup": round(rates["project"] / rates["reference"], 2),
        "mean_cosine": round(float(cosine.mean()), 5),
        "min_cosine": round(float(cosine.min()), 5),
        "neighbour_agreement": round(agreement(reference, fast), 4),
        "truncated_at_64": round(truncated_share(args.model, texts, 64), 4),
        "truncated_at_128": round(truncated_share(args.model, texts, 128), 4),
    }
    result["passed"] = all(result[key] >= bar for key, bar in BARS.items())
    result["accurate"] = all(result[key] >= bar for key, bar in BARS.items() if key != "speedup")
    result["recipes"] = {
        name.removeprefix("recipe "): figures(reference, vectors[name], rates[name] / rates["reference"])
        for name in encoders
        if name.startswith("recipe ")
    }
    result["chosen_on_check_texts"] = getattr(ours, "record", dict)()
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "embed.jsonl").open("a") as log:
        log.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'embedder':47} {'texts/s':>9} {'x ref':>6}")
    rows = [("sentence-transformers fp32 (reference)", rates["reference"])]
    rows.append((f"project {args.model} {args.precision} ({type(ours).__name__})", rates["project"]))
    if "onnx_fp32" in rates:
        rows.append(("ONNX Runtime fp32 (same export, not quantized)", rates["onnx_fp32"]))
    rows.append(("project, second pass (embedding cache)", cached_rate["cached"]))
    rows += [(name, rates[name]) for name in encoders if name.startswith("recipe ")]
    for label, rate in rows:
        print(f"{label:47} {rate:9.1f} {rate / rates['reference']:6.2f}")
    for name, check in result["recipes"].items():
        print(f"  {name}: {check}")
    print(
        f"recipe {result['recipe']}  speedup {result['speedup']}  "
        f"cosine mean {result['mean_cosine']} min {result['min_cosine']}  "
        f"top-10 neighbour agreement {result['neighbour_agreement']}  "
        f"({'passes' if result['passed'] else 'fails'} the bars {BARS})"
    )
    print(
        f"tweets longer than 64 tokens: {result['truncated_at_64']:.1%}, "
        f"than 128: {result['truncated_at_128']:.1%} (the embedders keep 128)"
    )


if __name__ == "__main__":
    main()
