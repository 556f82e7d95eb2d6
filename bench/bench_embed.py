"""Embedding benchmark: throughput of the project's embedder against plain sentence-transformers.

On --n real tweets, in one run:
  - texts/s of plain sentence-transformers fp32 (the reference) and of the project's embedder
    at --precision (default: the project's CPU default), and of MiniLM;
  - cosine between the two embeddings of each text (mean, min);
  - neighbour agreement: the share of each text's fp32 top-10 that the other top-10 also holds;
  - the embedding cache: texts/s of a second pass over the same texts.
`--json` prints one object with the keys speedup, mean_cosine, min_cosine, neighbour_agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from retrieval import index as fx  # noqa: E402
from retrieval.data import load_tweets  # noqa: E402
from retrieval.embed import CPU_DEFAULT_PRECISION, SentenceEmbedder, model_path  # noqa: E402
from retrieval.embed_cache import CachedEmbedder  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"


def throughput(encode, texts: list[str]) -> tuple[np.ndarray, float]:
    encode(texts[:8])
    start = time.perf_counter()
    vectors = encode(texts)
    return np.asarray(vectors, dtype=np.float32), len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="real tweets to embed")
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--precision", default=CPU_DEFAULT_PRECISION, choices=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = load_tweets(SHARED / "adobe_behaviour_test_time.parquet").table.column("content").to_pylist()[: args.n]
    info = {
        "args": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if not args.json:
        print(json.dumps(info))

    plain = SentenceTransformer(str(model_path(args.model)), device="cpu")
    reference, ref_rate = throughput(
        lambda t: plain.encode(t, batch_size=64, normalize_embeddings=True, convert_to_numpy=True), texts
    )
    ours = SentenceEmbedder(args.model, device="cpu", precision=args.precision)
    fast, fast_rate = throughput(ours.encode, texts)
    cosine = (reference * fast).sum(axis=1)
    _, ref_top = fx.exact_search(reference, reference, 11)
    _, fast_top = fx.exact_search(fast, fast, 11)
    agreement = fx.recall_at_k(fast_top[:, 1:], ref_top[:, 1:], 10)

    with tempfile.TemporaryDirectory() as folder:
        cached = CachedEmbedder(ours, f"{args.model}-{args.precision}", Path(folder))
        cached.encode(texts)
        _, cached_rate = throughput(cached.encode, texts)
    _, minilm_rate = throughput(SentenceEmbedder("minilm", device="cpu", precision="fp32").encode, texts)

    result = {
        **info,
        "n": len(texts),
        "reference_texts_per_s": round(ref_rate, 1),
        "project_texts_per_s": round(fast_rate, 1),
        "speedup": round(fast_rate / ref_rate, 2),
        "mean_cosine": round(float(cosine.mean()), 5),
        "min_cosine": round(float(cosine.min()), 5),
        "neighbour_agreement": round(agreement, 4),
        "cached_texts_per_s": round(cached_rate, 1),
        "minilm_texts_per_s": round(minilm_rate, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "embed.jsonl").open("a") as log:
        log.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'embedder':40} {'texts/s':>9}")
    print(f"{'sentence-transformers fp32 (reference)':40} {ref_rate:9.1f}")
    print(f"{f'project {args.model} {args.precision}':40} {fast_rate:9.1f}")
    print(f"{'project, second pass (embedding cache)':40} {cached_rate:9.1f}")
    print(f"{'minilm fp32':40} {minilm_rate:9.1f}")
    print(
        f"speedup {result['speedup']}  cosine mean {result['mean_cosine']} min {result['min_cosine']}  "
        f"top-10 neighbour agreement {result['neighbour_agreement']}"
    )


if __name__ == "__main__":
    main()
