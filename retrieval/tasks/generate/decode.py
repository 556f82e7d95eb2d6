"""Several drafts from one prompt at once, through llama.cpp's batch API.

The prompt is evaluated once; its KV cells are shared with one sequence per draft, and each step
decodes the next token of every unfinished draft in a single batch, each sampled by its own
llama.cpp sampler chain (its own seed and repeat-penalty history). On 2 cores a step of three
sequences of Gemma 3 270M costs 30 ms against 13.5 ms for one (its 262,144-row output layer
dominates and batches poorly), so three drafts take about 60% of the time they took one after
another through llama-cpp-python's completion API, which also paid Python's per-token overhead.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

TOP_K, MIN_P, PENALTY_LAST_N = 40, 0.05, 64
"""llama-cpp-python's completion defaults, kept so drafts read as they did through it."""


class Sampling(Protocol):
    """What decoding (and Generator.complete_many around it) reads from a generation config."""

    max_tokens: int
    temperature: float
    top_p: float
    repeat_penalty: float
    stop: tuple[str, ...]
    max_chars: int
    grammar: bool
    min_tokens: int


@dataclass
class _Draft:
    """One sequence being written: its text so far and whether it has ended."""

    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    text: str = ""
    tokens: int = 0
    done: bool = False
    shown: int = 0
    """Characters of `text` given to on_token so far: the tail that could start a stop string
    is held back until the draft ends, so what is streamed is what is kept."""

    def rest(self) -> str:
        """The text not shown yet, once the draft has ended."""
        rest, self.shown = self.text[self.shown :], len(self.text)
        return rest


def decode_drafts(
    model: Any,
    context: Any,
    prompt: Sequence[int],
    seeds: Sequence[int],
    rules: Sampling,
    *,
    max_tokens: int,
    stops: Sequence[str] = (),
    enders: np.ndarray | None = None,
    grammar: str | None = None,
    on_token: Callable[[int, str], None] | None = None,
) -> list[tuple[str, int]]:
    """(text, tokens) of one draft per seed, written together from `prompt`.

    `model`, `context`: llama-cpp-python's LlamaModel and a LlamaContext of at least len(seeds)
    sequences with room for the prompt plus len(seeds) * max_tokens. A draft ends at an
    end-of-generation token, at a stop string (cut before it), past `rules.max_chars` characters
    or at max_tokens; `enders` (token ids) are forbidden for its first `rules.min_tokens` tokens.
    `on_token(i, piece)` gets each draft's text as it grows, drafts interleaved.
    """
    import llama_cpp

    n_vocab = model.n_vocab()
    memory = llama_cpp.llama_get_memory(context.ctx)
    llama_cpp.llama_memory_clear(memory, True)
    n_batch = context.params.n_batch
    batch = llama_cpp.llama_batch_init(max(n_batch, len(seeds)), 0, len(seeds))
    samplers: list[Any] = []
    drafts = [_Draft() for _ in seeds]
    buffer = ctypes.create_string_buffer(64)
    try:
        for seed in seeds:
            samplers.append(_sampler(model, rules, seed, grammar))
        for first in range(0, len(prompt), n_batch):
            chunk = prompt[first : first + n_batch]
            _fill(batch, [(token, first + i, 0, first + i == len(prompt) - 1) for i, token in enumerate(chunk)])
            _decode(context, batch)
        for s in range(1, len(seeds)):
            llama_cpp.llama_memory_seq_cp(memory, 0, s, -1, -1)
        rows = {s: batch.n_tokens - 1 for s in range(len(seeds))}  # each draft's logits in the last batch
        position = len(prompt)
        while rows:
            step = []
            for s, row in rows.items():
                draft = drafts[s]
                if enders is not None and len(enders) and draft.tokens < rules.min_tokens:
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(context.ctx, row), shape=(n_vocab,))
                    logits[enders] = -np.inf
                token = llama_cpp.llama_sampler_sample(samplers[s], context.ctx, row)
                if llama_cpp.llama_vocab_is_eog(model.vocab, token):
                    draft.done = True
                    if (rest := draft.rest()) and on_token:
                        on_token(s, rest)
                    continue
                buffer, piece = _piece(model.vocab, token, buffer)
                shown = _grow(draft, draft.decoder.decode(piece), stops, rules.max_chars, max_tokens)
                if shown and on_token:
                    on_token(s, shown)
                if not draft.done:
                    step.append((token, s))
            if not step:
                break
            _fill(batch, [(token, position, s, True) for token, s in step])
            _decode(context, batch)
            rows = {s: i for i, (_, s) in enumerate(step)}
            position += 1
    finally:
        for sampler in samplers:
            llama_cpp.llama_sampler_free(sampler)
        llama_cpp.llama_batch_free(batch)
    return [(d.text, d.tokens) for d in drafts]


def _grow(draft: _Draft, new: str, stops: Sequence[str], max_chars: int, max_tokens: int) -> str:
    """Add a token's text; what a reader may see now: nothing past a stop string, and not the
    last characters while they could still begin one."""
    longest = max((len(s) for s in stops), default=0)
    before = len(draft.text)
    draft.text += new
    draft.tokens += 1
    cuts = [at for s in stops if s and (at := draft.text.find(s, max(0, before - longest))) >= 0]
    if cuts:
        draft.text, draft.done = draft.text[: min(cuts)], True
    draft.done = draft.done or len(draft.text) > max_chars or draft.tokens >= max_tokens
    if draft.done:
        return draft.rest()
    upto = max(draft.shown, len(draft.text) - max(longest - 1, 0))
    shown, draft.shown = draft.text[draft.shown : upto], upto
    return shown


def _sampler(model: Any, rules: Sampling, seed: int, grammar: str | None) -> Any:
    """A sampler chain as llama-cpp-python builds one: repeat penalty, grammar, top-k, top-p,
    min-p, temperature, then a draw with the draft's seed (greedy at temperature 0)."""
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    parts = [llama_cpp.llama_sampler_init_penalties(model.n_vocab(), PENALTY_LAST_N, rules.repeat_penalty, 0.0, 0.0)]
    if grammar:
        parts.append(llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root"))
    if rules.temperature <= 0:
        parts.append(llama_cpp.llama_sampler_init_greedy())
    else:
        parts += [
            llama_cpp.llama_sampler_init_top_k(TOP_K),
            llama_cpp.llama_sampler_init_top_p(rules.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
            llama_cpp.llama_sampler_init_temp(rules.temperature),
            llama_cpp.llama_sampler_init_dist(seed % 0xFFFFFFFF),  # 0xFFFFFFFF would mean "random"
        ]
    if any(part is None for part in parts):
        for part in parts:
            if part is not None:
                llama_cpp.llama_sampler_free(part)
        llama_cpp.llama_sampler_free(chain)
        raise ValueError("llama.cpp refused a sampler (a grammar that does not parse?)")
    for part in parts:
        llama_cpp.llama_sampler_chain_add(chain, part)  # the chain owns it from here
    return chain


def _fill(batch: Any, tokens: Sequence[tuple[int, int, int, bool]]) -> None:
    """(token, position, sequence, wants logits) into a llama_batch."""
    batch.n_tokens = len(tokens)
    for i, (token, position, sequence, logits) in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = position
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = sequence
        batch.logits[i] = logits


def _decode(context: Any, batch: Any) -> None:
    import llama_cpp

    code = llama_cpp.llama_decode(context.ctx, batch)
    if code != 0:
        raise RuntimeError(f"llama_decode returned {code} (context full?)")


def piece(vocab: Any, token: int) -> bytes:
    """A token's bytes (a piece of a UTF-8 character, for some)."""
    return _piece(vocab, token, ctypes.create_string_buffer(64))[1]


def _piece(vocab: Any, token: int, buffer: Any) -> tuple[Any, bytes]:
    import llama_cpp

    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n < 0:  # the buffer was too small; -n is the size needed
        buffer = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer, buffer.raw[:n]
