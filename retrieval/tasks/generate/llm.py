"""A local GGUF model through llama.cpp: one that a registry package ships (by name), or any file given.

Loading checks what it can before llama.cpp sees the file (exists, GGUF magic, fits in free
memory), so a bad model is a one-line ModelMissing, never a crash. The model is loaded once,
with the whole context it may use (`max_ctx`, bounded by its training context): loading
costs 0.5 s, mostly building the tokenizer, and a larger n_ctx adds under 0.1 s and a KV
cache of tens of MB for the bundled models (llama.cpp's default 512 is too small for
retrieval-augmented prompts). A model with a chat template in its GGUF (an instruct model)
gets the conversation through that template; one without (a base model such as Gemma 3 270M)
gets it as plain few-shot text to continue (`as_text`), which is what a base model was trained
on, instead of llama-cpp-python's fallback template.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from retrieval.config import cache_dir
from retrieval.errors import ModelMissing, RetrievalError
from retrieval.tasks.generate.models import LLM_NAMES, llm_file

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class Sampling(Protocol):
    """What `complete` reads from a generation config."""

    max_tokens: int
    temperature: float
    top_p: float
    repeat_penalty: float
    stop: tuple[str, ...]
    max_chars: int
    grammar: bool
    min_tokens: int


TWEET_GRAMMAR = r"""
root ::= run? text (run text)* run?
run ::= emoji (" "? emoji)? (" "? emoji)? " "?
text ::= " "* solid plain*
emoji ::= [\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF] [\uFE0F]?
solid ::= [^ \n\r\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]
plain ::= [^\n\r\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]
"""
"""One paragraph (no line break), at most three emoji in a row (spaces between them count as
none), in llama.cpp's GBNF: what `postprocess` repairs, enforced while sampling instead, so no
tokens go to what is cut later."""


def default_threads() -> int:
    """Cores this process may use, less those other processes keep busy (1-minute load), at least 1.

    llama.cpp's threads wait for each other at every layer, so one that shares its core with
    a busy process stalls them all: on 2 shared cores under a load of 7, 64 tokens took 2.4 s
    with one thread and 20-49 s with two.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def as_text(messages: Messages) -> str:
    """A chat as text for a base model to continue: the system line, then each request on one line
    and its answer on the next, a blank line between turns, ending where the last answer starts."""
    parts = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    for ask, answer in zip(turns[0::2], turns[1::2]):
        parts.append(f"{ask['content']}\n{answer['content']}")
    if len(turns) % 2:
        parts.append(f"{turns[-1]['content']}\n")
    return "\n\n".join(parts)


class Generator:
    """A local GGUF model through llama.cpp, loaded once with the context it may use."""

    def __init__(self, model: str | Path | None = None, *, max_ctx: int = 4096, n_threads: int | None = None) -> None:
        """`model`: a name in LLM_NAMES, a GGUF file, or None for DEFAULT_LLM."""
        try:
            import llama_cpp
        except ImportError:
            raise ModelMissing("llama-cpp-python is not installed (run ./setup.sh)") from None
        self._llama_cpp = llama_cpp
        self.path = llm_file(model)
        if self.path.is_dir():
            raise ModelMissing(f"{self.path}: a folder, not a GGUF model file")
        if not self.path.is_file():
            raise ModelMissing(f"{self.path}: no such model file, nor a model name ({', '.join(LLM_NAMES)})")
        with self.path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelMissing(f"{self.path}: not a GGUF model file")
        free = _available_memory()
        if free is not None and self.path.stat().st_size > free:
            raise ModelMissing(
                f"{self.path}: {self.path.stat().st_size / 2**30:.1f} GiB model, only {free / 2**30:.1f} GiB free"
            )
        self.n_threads = n_threads or default_threads()
        self.max_ctx = max_ctx
        self._llm: Llama | None = self._load(n_ctx=max_ctx)
        self.n_ctx_train = self._llm._model.n_ctx_train()
        self.chat = bool(self._llm.metadata.get("tokenizer.chat_template"))
        if self.context_limit() < max_ctx:
            self.close()
        self._tweet_grammar: Any = None
        self._enders: Any = None

    @property
    def name(self) -> str:
        return self.path.name

    def _load(self, **kwargs: Any) -> Llama:
        from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp logs to stderr even when not verbose

        try:
            with suppress_stdout_stderr(disable=False):
                return self._llama_cpp.Llama(
                    str(self.path), n_threads=self.n_threads, n_threads_batch=self.n_threads, verbose=False, **kwargs
                )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelMissing(f"{self.path}: llama.cpp cannot load it ({str(e).splitlines()[0]})") from None

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def context_limit(self) -> int:
        return min(self.max_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else self.max_ctx

    def _model(self) -> Llama:
        if self._llm is None:
            self._llm = self._load(n_ctx=self.context_limit())
        return self._llm

    def complete(
        self,
        messages: Messages,
        *,
        prompt_tokens: int,
        config: Sampling,
        seed: int,
        on_token: Callable[[str], None] | None = None,
    ) -> tuple[str, int, float]:
        """The model's reply to messages: (text, tokens generated, seconds)."""
        max_tokens = max(16, min(config.max_tokens, self.context_limit() - prompt_tokens - 16))
        llm = self._model()
        start, pieces, tokens = time.perf_counter(), [], 0
        try:
            sampling = {
                "max_tokens": max_tokens,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "repeat_penalty": config.repeat_penalty,
                "seed": seed,
                "stream": True,
            }
            if config.grammar:
                sampling["grammar"] = self._grammar()
            if config.min_tokens > 0:
                sampling["logits_processor"] = self._hold_ending(llm, config.min_tokens)
            if self.chat:
                stream = llm.create_chat_completion(messages, stop=list(config.stop), **sampling)  # type: ignore[arg-type]
            else:  # one answer per line in as_text, so the line's end is the tweet's
                stream = llm.create_completion(as_text(messages), stop=[*config.stop, "\n"], **sampling)
            chars = 0
            for chunk in stream:
                choice = chunk["choices"][0]  # type: ignore[index]
                piece = (choice["delta"].get("content") if self.chat else choice["text"]) or ""
                if piece:
                    tokens += 1
                    chars += len(piece)
                    pieces.append(piece)
                    if on_token:
                        on_token(piece)
                if chars > config.max_chars:  # longer than anything post-processing keeps
                    break
        except (ValueError, RuntimeError) as e:
            raise RetrievalError(f"{self.path.name}: generation failed ({str(e).splitlines()[0]})") from None
        return "".join(pieces), tokens, time.perf_counter() - start

    def _hold_ending(self, llm: Llama, min_tokens: int) -> Any:
        """A logits processor that forbids the end of text and line breaks for the first
        min_tokens tokens of the reply: a base model otherwise ends its line early."""
        import numpy as np
        from llama_cpp import LogitsProcessorList

        if self._enders is None:
            self._enders = np.array(self._ender_ids(llm), dtype=np.int64)
        start: list[int] = []

        def hold(input_ids: Any, scores: Any) -> Any:
            if not start:
                start.append(len(input_ids))
            if len(input_ids) - start[0] < min_tokens:
                scores[self._enders] = -np.inf
            return scores

        return LogitsProcessorList([hold])

    def _ender_ids(self, llm: Llama) -> list[int]:
        """Every token that ends generation (llama.cpp stops at any of them: Gemma's end of text and
        end of turn) and every token whose text holds a line break. Finding them scans the
        whole vocabulary (1.1 s for Gemma's 262,144 tokens, on every CLI call), so the list is
        kept in the model cache, under a key of the file's path, size and modification time."""
        stat = self.path.stat()
        key = hashlib.sha256(f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        record = cache_dir() / "models" / f"{self.path.stem}.{key}.enders.json"
        n_vocab = llm.n_vocab()
        try:
            ids = [int(i) for i in json.loads(record.read_text())]
            if all(0 <= i < n_vocab for i in ids):
                return ids
        except (OSError, ValueError, TypeError):
            pass
        vocab = llm._model.vocab
        ids = [
            i for i in range(n_vocab) if self._llama_cpp.llama_vocab_is_eog(vocab, i) or b"\n" in llm.detokenize([i])
        ]
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(ids))
            os.replace(tmp, record)
        except OSError as e:
            log.info("%s: not cached (%s)", record, e)
        return ids

    def _grammar(self) -> Any:
        if self._tweet_grammar is None:
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):
                self._tweet_grammar = self._llama_cpp.LlamaGrammar.from_string(TWEET_GRAMMAR, verbose=False)
        return self._tweet_grammar

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
