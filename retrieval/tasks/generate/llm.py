"""A local GGUF model through llama.cpp: one that a registry package ships (by name), or any file given.

Loading checks what it can before llama.cpp sees the file (exists, GGUF magic, fits in free
memory), so a bad model is a one-line ModelMissing, never a crash. The model is loaded once,
with one context for the whole window it may use (`max_ctx`, bounded by its training context)
shared by up to `max_drafts` sequences, so the drafts of one prompt are decoded together
(decode.py): loading costs 0.5 s, mostly building the tokenizer; the KV cache is tens of MB for
the bundled models, and a 128-token step's logits another 128 MB at Gemma's 262,144 tokens.
A model with a chat template in its GGUF (an instruct model) gets the conversation through that
template; one without (a base model such as Gemma 3 270M) gets it as plain few-shot text to
continue (`as_text`), which is what a base model was trained on.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retrieval.config import cache_dir
from retrieval.errors import ModelMissing, RetrievalError
from retrieval.tasks.generate.decode import Sampling, decode_drafts, piece
from retrieval.tasks.generate.models import LLM_NAMES, llm_file

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


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


def default_threads(busy: float | None = None) -> int:
    """Cores this process may use, less those other processes keep busy, at least 1.

    llama.cpp's threads wait for each other at every layer, so one that shares its core with
    a busy process stalls them all: on 2 shared cores under a load of 7, 64 tokens took 2.4 s
    with one thread and 20-49 s with two. `busy`: cores that others used just now (CpuWatch);
    without it the 1-minute load average, which also counts this program's own previous run.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(cores, cores - round(busy)))


def _cpu_seconds() -> float | None:
    """Busy CPU seconds since boot (not idle or waiting) of the cores this process may run on, or None."""
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name == "cpu":  # the total over every core, these and others
                    continue
                if not name.startswith("cpu"):  # the per-core lines are over
                    break
                if mine is None or int(name[3:]) in mine:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
                    busy += user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return None
    return busy / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """How many cores other processes kept busy while this one did something (loading a model):
    the busy time of the cores this process may use over the span, less this process's own."""

    def __init__(self) -> None:
        self.start = (_cpu_seconds(), time.process_time(), time.monotonic())

    def busy_elsewhere(self) -> float | None:
        """Cores used by other processes since the watch started; None where /proc/stat is not."""
        machine, own, wall = _cpu_seconds(), time.process_time(), time.monotonic()
        if machine is None or self.start[0] is None or wall - self.start[2] < 0.05:
            return None
        others = (machine - self.start[0]) - (own - self.start[1])
        return max(0.0, others / (wall - self.start[2]))


def _native_logging(llama_cpp: Any) -> None:
    """llama.cpp's log lines go to its own C logger (stderr, which loading silences) instead of
    llama-cpp-python's Python callback, for the whole process. That callback takes the GIL for
    each of the 760 lines a model load writes, so a load on a thread beside busy Python code (the
    CLI imports the search stack meanwhile) waited for the GIL 760 times: 2.9-3.9 s against 0.5 s
    beside a thread that held it (docs/generation.md, "Where a cold run's time goes")."""
    llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))  # NULL: llama.cpp's default


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
    """A local GGUF model through llama.cpp, loaded once with the context it may use, that writes
    several drafts of one prompt together (decode.py)."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        max_ctx: int = 4096,
        n_threads: int | None = None,
        max_drafts: int = 8,
    ) -> None:
        """`model`: a name in LLM_NAMES, a GGUF file, or None for DEFAULT_LLM. `max_drafts`: the
        sequences decoded in one batch; more drafts than that are written in turns."""
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
        watch = CpuWatch()
        self.n_threads = n_threads or default_threads(0.0)
        self.max_ctx = max_ctx
        self.max_drafts = max(1, max_drafts)
        self._llm: Any = None
        self._context: Any = None
        self._open()
        if n_threads is None:  # what other processes used while the model loaded (0.5 s) says what is free
            self.n_threads = default_threads(watch.busy_elsewhere())
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):
                llama_cpp.llama_set_n_threads(self._context.ctx, self.n_threads, self.n_threads)
        self.n_ctx_train = self._llm.n_ctx_train()
        self.template = self._llm.metadata().get("tokenizer.chat_template")
        self.chat = bool(self.template)
        self._chat_formatter: Any = None
        self._enders: Any = None

    @property
    def name(self) -> str:
        return self.path.name

    def _open(self) -> None:
        """The model and one context of `context_limit()` cells shared by `max_drafts` sequences."""
        from llama_cpp._internals import LlamaContext, LlamaModel
        from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp logs to stderr even when not verbose

        try:
            with suppress_stdout_stderr(disable=False):
                _native_logging(self._llama_cpp)
                self._llama_cpp.llama_backend_init()
                model_params = LlamaModel.default_params()
                # every layer on the GPU when llama.cpp was built for one (a small model fits), none otherwise
                model_params.n_gpu_layers = -1 if self._llama_cpp.llama_supports_gpu_offload() else 0
                self._llm = LlamaModel(path_model=str(self.path), params=model_params, verbose=False)
                params = self._llama_cpp.llama_context_default_params()
                train = self._llm.n_ctx_train()
                params.n_ctx = min(self.max_ctx, train) if train > 0 else self.max_ctx
                params.n_batch, params.n_ubatch = 512, 128  # a 128-token step holds 128 MB of logits, not 512
                params.flash_attn_type = self._llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # prompt 25% faster on a CPU
                params.n_seq_max = self.max_drafts
                params.kv_unified = True  # the drafts share the prompt's cells and one pool of free ones
                params.n_threads = params.n_threads_batch = self.n_threads
                self._context = LlamaContext(model=self._llm, params=params, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            self.close()
            raise ModelMissing(f"{self.path}: llama.cpp cannot load it ({str(e).splitlines()[0]})") from None

    def _model(self) -> Any:
        if self._llm is None:
            self._open()
        return self._llm

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def context_limit(self) -> int:
        return min(self.max_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else self.max_ctx

    def prompt(self, messages: Messages) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens and the strings that end a reply: through the model's chat template
        for an instruct model, as plain text for a base model (one answer per line)."""
        model = self._model()
        if not self.chat:
            text, add_bos, stops = as_text(messages), True, ("\n",)
        else:
            import jinja2

            try:
                formatted = self._formatter(model)(messages=messages)  # type: ignore[arg-type]
            except (jinja2.TemplateError, ValueError) as e:
                raise RetrievalError(f"{self.name}: its chat template refused the prompt ({e})") from None
            text, add_bos = formatted.prompt, not formatted.added_special
            stop = formatted.stop or ()
            stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True), stops

    def _formatter(self, model: Any) -> Any:
        """The model's own chat template, compiled once."""
        if self._chat_formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = model.token_eos(), model.token_bos()
            self._chat_formatter = Jinja2ChatFormatter(
                template=self.template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
            )
        return self._chat_formatter

    def complete(
        self,
        messages: Messages,
        *,
        config: Sampling,
        seed: int,
        on_token: Callable[[str], None] | None = None,
    ) -> tuple[str, int, float]:
        """The model's reply to messages: (text, tokens generated, seconds)."""
        sink = (lambda _, piece: on_token(piece)) if on_token else None
        return self.complete_many(messages, config=config, seeds=[seed], on_token=sink)[0]

    def complete_many(
        self,
        messages: Messages,
        *,
        config: Sampling,
        seeds: Sequence[int],
        on_token: Callable[[int, str], None] | None = None,
    ) -> list[tuple[str, int, float]]:
        """One reply per seed, `max_drafts` at a time in one batch: (text, tokens, seconds), a
        draft's seconds its share, by tokens, of its batch's time (they sum to the time spent).
        A draft's text depends on its seed and on how many are written beside it (a batch's
        arithmetic differs in the last bits), not on anything else."""
        model = self._model()
        prompt, stops = self.prompt(messages)  # a template's own error is a RetrievalError
        room = self.context_limit() - len(prompt)
        if room < 16:
            raise RetrievalError(
                f"{self.name}: the prompt is {len(prompt)} tokens, the context {self.context_limit()}; "
                "use fewer exemplars or a model with a longer context"
            )
        max_tokens = min(config.max_tokens, room)
        group = max(1, min(self.max_drafts, room // max_tokens))
        if group < min(len(seeds), self.max_drafts):
            log.info("the prompt leaves room for %d drafts at a time; the others wait their turn", group)
        enders = self._ender_array(model) if config.min_tokens > 0 else None
        out: list[tuple[str, int, float]] = []
        for first in range(0, len(seeds), group):
            start = time.perf_counter()
            sink = (lambda i, piece, first=first: on_token(first + i, piece)) if on_token else None
            try:
                drafts = decode_drafts(
                    model,
                    self._context,
                    prompt,
                    seeds[first : first + group],
                    config,
                    max_tokens=max_tokens,
                    stops=(*config.stop, *stops),
                    enders=enders,
                    grammar=TWEET_GRAMMAR if config.grammar else None,
                    on_token=sink,
                )
            except (ValueError, RuntimeError) as e:
                raise RetrievalError(f"{self.path.name}: generation failed ({str(e).splitlines()[0]})") from None
            seconds = time.perf_counter() - start
            weights = [max(tokens, 1) for _, tokens in drafts]
            out += [(text, tokens, seconds * w / sum(weights)) for (text, tokens), w in zip(drafts, weights)]
        return out

    def _ender_array(self, model: Any) -> Any:
        import numpy as np

        if self._enders is None:
            self._enders = np.array(self._ender_ids(model), dtype=np.int64)
        return self._enders

    def _ender_ids(self, model: Any) -> list[int]:
        """Every token that ends generation (llama.cpp stops at any of them: Gemma's end of text and
        end of turn) and every token whose text holds a line break. Finding them scans the
        whole vocabulary (1.1 s for Gemma's 262,144 tokens, on every CLI call), so the list is
        kept in the model cache, under a key of the file's path, size and modification time."""
        stat = self.path.stat()
        key = hashlib.sha256(f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        record = cache_dir() / "models" / f"{self.path.stem}.{key}.enders.json"
        n_vocab = model.n_vocab()
        try:
            ids = [int(i) for i in json.loads(record.read_text())]
            if all(0 <= i < n_vocab for i in ids):
                return ids
        except (OSError, ValueError, TypeError):
            pass
        vocab = model.vocab
        ids = [i for i in range(n_vocab) if self._llama_cpp.llama_vocab_is_eog(vocab, i) or b"\n" in piece(vocab, i)]
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(ids))
            os.replace(tmp, record)
        except OSError as e:
            log.info("%s: not cached (%s)", record, e)
        return ids

    def close(self) -> None:
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):
            if self._context is not None:
                self._context.close()
                self._context = None
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
