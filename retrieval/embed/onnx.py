"""The CPU fast path: a sentence-transformers model run by ONNX Runtime, int8 by default.

The local model folder is exported once to ONNX (torch.onnx.export). For int8, the recipe is
chosen on this machine by retrieval/embed/recipes.py among those of retrieval/embed/int8.py
(calibrated on CALIBRATION_TEXTS, checked against the fp32 export), once per CPU feature set: a
model quantized on one CPU is never reused on another without its own check. Plain dynamic
quantization (one scale per activation tensor) is faster still but lost too much on MPNet
(docs/benchmarks.md).

The files are cached under `<cache dir>/models/onnx/`, written to a temporary name and renamed,
and rebuilt when unreadable. Running them needs neither torch nor sentence-transformers: only
exporting does, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from filelock import FileLock

from retrieval.config import cache_dir
from retrieval.embed.cpu import cpu_key
from retrieval.embed.models import MAX_SEQ_LENGTH, model_path
from retrieval.embed.recipes import FP32, Choice, choose_recipe, read_choice
from retrieval.errors import ModelMissing, RetrievalError

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

OnnxPrecision = Literal["fp32", "int8"]
RECIPE = 3
"""Part of every cached file's name: bump it when the export, the recipes or their check change."""
SMOOTHING_ALPHA = 0.6
INT8_BLOCK = 32
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
CALIBRATION_TEXTS = (
    "We're hiring! Join our engineering team in Austin <hyperlink>",
    "Happy Friday! What are your plans for the weekend? 🎉",
    "Our new store opens Saturday at 9am. See you there! #GrandOpening",
    "Thanks <mention> for the kind words about our customer service team.",
    "Breaking: quarterly results beat expectations, revenue up 12% year over year.",
    "Sorry to hear that. Please DM us your order number and we'll look into it right away.",
    "Introducing the all-new lineup: faster, lighter and built to last. Learn more: <hyperlink>",
    "Celebrate Earth Day with us: every purchase today plants a tree 🌳 #EarthDay",
    "Watch the livestream of our keynote tomorrow at 10am PT <hyperlink>",
    "Did you know? 3 out of 4 customers recycle their packaging. Let's get that to 4!",
    "Congratulations to the winners of this year's innovation awards! 🏆",
    "Tips for staying safe online: use strong passwords and turn on two-factor authentication.",
    "Our team volunteered at the local food bank this weekend ❤️ #CommunityFirst",
    "New recipe alert: spicy chicken tacos with fresh lime & cilantro",
    "The wait is over. Pre-orders start now <hyperlink> <hyperlink>",
    "Join us at booth 42 at #CES2023 to see the future of smart homes.",
    "Flight delayed? Check the app for real-time updates and rebooking options.",
    "RT if you agree: coffee first, everything else later ☕",
    "Meet Maria, a nurse who has cared for patients for 25 years. Thank you, Maria!",
    "Free shipping on all orders over $50 this week only. Use code SAVE50 at checkout.",
    "We are committed to net zero emissions by 2040. Read our sustainability report <hyperlink>",
    "Game day! Who are you cheering for tonight? 🏈 #SundayFootball",
    "Update: the outage has been resolved. Thanks for your patience, everyone.",
    "How do you like your pizza? Reply with your favourite toppings 🍕",
)
"""Tweet-like sentences (written for this, not real tweets) whose activations set the int8
smoothing; calibrating on 128 real tweets instead gave the same agreement (docs/benchmarks.md)."""


@dataclass(frozen=True)
class ModelSpec:
    """What the model folder's sentence-transformers config says about tokenizing and pooling."""

    folder: Path
    dim: int
    max_seq_length: int
    do_lower_case: bool


def read_spec(folder: Path) -> ModelSpec:
    """Check that the folder is Transformer -> mean Pooling (-> Normalize), the one pipeline run here."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        st_config = json.loads((folder / "sentence_bert_config.json").read_text())
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = json.loads((folder / pooling_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise ModelMissing(f"{folder}: not a sentence-transformers folder the ONNX path can read ({e})") from None
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in SUPPORTED_MODULES:
            raise ModelMissing(
                f"{folder}: module {kind} is not supported by the ONNX path", hint="precision", value="fp32"
            )
    modes = sorted(k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v)
    if modes != ["mean_tokens"]:
        raise ModelMissing(
            f"{folder}: pooling {modes} is not supported by the ONNX path", hint="precision", value="fp32"
        )
    return ModelSpec(
        folder=folder,
        dim=int(pooling["word_embedding_dimension"]),
        max_seq_length=int(st_config.get("max_seq_length") or MAX_SEQ_LENGTH),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
    )


def onnx_path(folder: Path, precision: OnnxPrecision) -> Path:
    """The cache file for this model folder and precision; a changed weights file gets a new name,
    and an int8 file is this CPU's own (its choice of recipe sits beside it, with a .json suffix)."""
    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).exists()), folder)
    stat = weights.stat()
    digest = hashlib.sha1(f"{folder.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    name = f"model-int8-r{RECIPE}-{cpu_key()}.onnx" if precision == "int8" else f"model-fp32-r{RECIPE}.onnx"
    return cache_dir() / "models" / "onnx" / f"{folder.name}-{digest}" / name


def export_onnx(folder: Path, target: Path) -> Path:
    """Export the folder's transformer in fp32 to `target` once (torch needed here only); atomic."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX (once; about 30 s for MPNet)", folder)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / "fp32.onnx"
        _export_fp32(folder, built)
        os.replace(built, target)
    for stale in target.parent.glob("model-*-r*.*"):
        if f"-r{RECIPE}" not in stale.name:
            stale.unlink()  # made by an older export or recipe: never read again
    return target


def _export_fp32(folder: Path, out: Path) -> None:
    """TorchScript exporter: its graph ran about 15% faster in ONNX Runtime than the dynamo
    exporter's here (ORT fuses its LayerNorms and GELUs into fast kernels)."""
    import torch
    from transformers import AutoModel

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = TokenEmbeddings(AutoModel.from_pretrained(str(folder))).eval()
    sample = torch.ones(2, 8, dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample, sample),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=["token_embeddings"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_embeddings": axes},
        )


def calibration_feeds(folder: Path) -> list[dict[str, np.ndarray]]:
    """CALIBRATION_TEXTS as model inputs, one text per feed (no padding to mask out)."""
    from tokenizers import Tokenizer

    spec = read_spec(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(min(spec.max_seq_length, MAX_SEQ_LENGTH))
    tokenizer.no_padding()
    texts = [t.lower() for t in CALIBRATION_TEXTS] if spec.do_lower_case else list(CALIBRATION_TEXTS)
    return [
        {"input_ids": np.array([e.ids], dtype=np.int64), "attention_mask": np.ones((1, len(e.ids)), dtype=np.int64)}
        for e in tokenizer.encode_batch(texts)
    ]


def _pad_id(tokenizer: Tokenizer, folder: Path) -> int:
    if tokenizer.padding:
        return int(tokenizer.padding["pad_id"])
    config = json.loads((folder / "config.json").read_text())
    return int(config.get("pad_token_id") or 0)


def _prepare(name: str, precision: OnnxPrecision, threads: int, level: int) -> None:
    logging.basicConfig(level=level, format="%(message)s")
    OnnxEmbedder(name, precision=precision, threads=threads, isolate=False)


def _prepare_in_child(name: str, precision: OnnxPrecision, threads: int) -> None:
    """Export and choose in a fresh process: its memory (torch, the model in several copies) is
    returned to the system when it ends, before this process embeds anything."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            pool.submit(_prepare, name, precision, threads, level).result()
        except BrokenProcessPool:
            raise ModelMissing(f"{name}: preparing the ONNX model failed (the process died: out of memory?)") from None


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxEmbedder:
    """Tokenize (the folder's fast tokenizer), run ONNX Runtime on length-sorted batches, mean-pool, normalise.

    Vectors match sentence-transformers on the same folder: same tokens, same truncation, same pooling.
    """

    def __init__(
        self,
        name: str = "mpnet",
        *,
        precision: OnnxPrecision = "int8",
        batch_size: int = 64,
        threads: int | None = None,
        max_seq_length: int | None = MAX_SEQ_LENGTH,
        isolate: bool = True,
    ) -> None:
        """`isolate`: make missing cached files (export, recipe choice) in a child process, so that
        torch and the candidate models never sit in this process's memory."""
        from tokenizers import Tokenizer

        if precision not in ("fp32", "int8"):
            raise RetrievalError(
                f"precision {precision!r} is not supported by the ONNX path", hint="precision", value="int8"
            )
        self.name = name
        self.precision = precision
        self.batch_size = batch_size
        self.threads = threads or available_cores()
        self.spec = read_spec(model_path(name))
        self.dim = self.spec.dim
        self.tokenizer = Tokenizer.from_file(str(self.spec.folder / "tokenizer.json"))
        limit = min(self.spec.max_seq_length, max_seq_length or self.spec.max_seq_length)
        self.tokenizer.enable_truncation(limit)
        self.pad_id = _pad_id(self.tokenizer, self.spec.folder)
        self.tokenizer.no_padding()
        fp32, int8 = onnx_path(self.spec.folder, "fp32"), onnx_path(self.spec.folder, "int8")
        if isolate and not self._ready(fp32, int8):
            int8.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(int8.parent / ".prepare.lock"):  # a second build waits and reuses the first's work
                if not self._ready(fp32, int8):
                    _prepare_in_child(name, precision, self.threads)
        self.choice: Choice | None = self._choose(fp32, int8) if precision == "int8" else None
        self.recipe = self.choice.recipe if self.choice else FP32
        path = fp32 if self.recipe == FP32 else int8
        self.model_id = f"{name}-fp32-onnx{RECIPE}" if self.recipe == FP32 else f"{name}-int8-{self.recipe}-{cpu_key()}"
        self.session = self._load(path)

    def _ready(self, fp32: Path, int8: Path) -> bool:
        if self.precision == "fp32":
            return fp32.exists()
        choice = read_choice(int8.with_suffix(".json"))
        return choice is not None and (int8 if choice.recipe != FP32 else fp32).exists()

    def _choose(self, fp32: Path, target: Path) -> Choice:
        """This CPU's recipe: read from its record, or chosen now (and again if its file is gone)."""
        choice = read_choice(target.with_suffix(".json"))
        if choice is None or (choice.recipe != FP32 and not target.exists()):
            choice = choose_recipe(
                fp32,
                self._load(fp32),
                target,
                calibration_feeds(self.spec.folder),
                CALIBRATION_TEXTS,
                self.open_session,
                self.encode_with,
                alpha=SMOOTHING_ALPHA,
                block=INT8_BLOCK,
            )
        return choice

    def _rebuild(self, path: Path) -> None:
        """An unreadable cached file is made again: the fp32 export, or this CPU's int8 choice."""
        path.unlink(missing_ok=True)
        if path.name.startswith("model-fp32"):
            export_onnx(self.spec.folder, path)
        else:
            path.with_suffix(".json").unlink(missing_ok=True)
            self._choose(onnx_path(self.spec.folder, "fp32"), path)

    def _load(self, path: Path) -> onnxruntime.InferenceSession:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

        unreadable = (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile)
        if not path.exists():
            self._rebuild(path)
        try:
            return self.open_session(path)
        except unreadable as e:
            log.warning("%s is unreadable (%s); making it again", path, str(e).splitlines()[0])
        self._rebuild(path)
        try:
            return self.open_session(path)
        except unreadable as e:
            raise ModelMissing(f"{path}: cannot load the exported model ({str(e).splitlines()[0]})") from None

    def open_session(self, path: Path) -> onnxruntime.InferenceSession:
        """An ONNX Runtime session on this embedder's threads (the recipe check opens several)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def record(self) -> dict[str, object]:
        """What an index manifest keeps about this embedder beyond name, width and precision."""
        return self.choice.record() if self.choice else {"recipe": FP32}

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        return self.encode_with(self.session, texts, progress=progress)

    def encode_with(
        self, session: onnxruntime.InferenceSession, texts: Sequence[str], *, progress: bool = False
    ) -> np.ndarray:
        """`encode` through another session of the same model, tokenized and pooled alike."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self.spec.do_lower_case:
            texts = [t.lower() for t in texts]
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        order = np.argsort([len(i) for i in ids], kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="embedding", unit="batch")
        for batch in batches:
            out[batch] = self._embed(session, [ids[i] for i in batch])
        return out

    def _embed(self, session: onnxruntime.InferenceSession, ids: list[list[int]]) -> np.ndarray:
        width = max(len(i) for i in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        (tokens,) = session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        summed = np.einsum("btd,bt->bd", tokens, mask.astype(np.float32))
        pooled = summed / mask.sum(axis=1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
