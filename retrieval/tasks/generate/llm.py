"""A local GGUF model through llama.cpp: one that a registry package ships (by name), or any file given.

Loading checks what it can before llama.cpp sees the file (exists, GGUF magic, fits in free
memory), so a bad model is a one-line ModelMissing, never a crash. n_ctx starts at what the
first prompt needs and grows when a longer one comes (llama.cpp's default 512 is too small
for retrieval-augmented prompts). A model with a chat template in its GGUF (an instruct model)
gets the conversation through that template; one without (a base model such as Gemma 3 270M)
gets it as plain few-shot text to continue (`as_text`), which is what a base model was trained
on, instead of llama-cpp-python's fallback template.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
    """A local GGUF model through llama.cpp; n_ctx grows to fit the largest prompt seen."""

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
        self._vocab = self._load(n_ctx=256, vocab_only=True)
        arch = self._vocab.metadata.get("general.architecture", "")
        self.n_ctx_train = int(self._vocab.metadata.get(f"{arch}.context_length", 0) or 0)
        self.chat = bool(self._vocab.metadata.get("tokenizer.chat_template"))
        self._llm: Llama | None = None
        self._tweet_grammar: Any = None
        self.n_ctx = 0

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
        return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def context_limit(self) -> int:
        return min(self.max_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else self.max_ctx

    def _ensure_ctx(self, needed: int) -> Llama:
        if self._llm is None or needed > self.n_ctx:
            n_ctx = min(self.context_limit(), 256 * math.ceil(needed / 256))
            self.close()
            self._llm = self._load(n_ctx=n_ctx)
            self.n_ctx = n_ctx
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
        llm = self._ensure_ctx(prompt_tokens + max_tokens + 32)
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
