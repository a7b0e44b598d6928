"""The generation loop: prompt graph once, then one cached step per new token.

`generate(decoder, prompts, params, max_new_tokens=..., stop_ids=...)` returns one
`Generation` per prompt; `on_token(row, token)` is called as each token is chosen, which is
how the CLI streams text.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pangu_ms.infer.decoder import GenerationError, IncrementalDecoder
from pangu_ms.infer.sampling import Sampler, SamplingParams


@dataclass
class Generation:
    """The output of one prompt."""

    tokens: list[int] = field(default_factory=list)
    """new token ids (a stop id that ended generation is not included)."""
    finish_reason: str = ""
    """'stop' (a stop id), 'length' (max_new_tokens) or 'cache_full' (max_length reached)."""


def generate(decoder: IncrementalDecoder, prompts: list[list[int]], params: SamplingParams, *,
             max_new_tokens: int, stop_ids: tuple[int, ...] = (),
             on_token: Callable[[int, int], None] | None = None) -> list[Generation]:
    """Generate up to `max_new_tokens` per prompt; prompts beyond the decoder's batch size are
    run in successive batches. Returns a `Generation` per prompt, in order."""
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    results: list[Generation] = []
    b = decoder.batch_size
    for start in range(0, len(prompts), b):
        chunk = prompts[start:start + b]

        def emit(row: int, tok: int, _base: int = start) -> None:
            if on_token is not None:
                on_token(_base + row, tok)

        results.extend(_generate_batch(decoder, chunk, params, max_new_tokens, set(stop_ids), emit))
    return results


def _generate_batch(decoder: IncrementalDecoder, prompts: list[list[int]], params: SamplingParams,
                    max_new_tokens: int, stops: set[int], emit: Callable[[int, int], None]) -> list[Generation]:
    """One batch (n <= decoder.batch_size) through the prompt graph and the step graph."""
    n = len(prompts)
    out = [Generation() for _ in range(n)]
    sampler = Sampler(params, prompts, decoder.lm.config.vocab_size)
    logits = decoder.start(prompts)
    active = np.ones(n, bool)
    for _ in range(max_new_tokens):
        tokens = sampler(logits)
        for r in np.flatnonzero(active):
            tok = int(tokens[r])
            if tok in stops:
                active[r] = False
                out[r].finish_reason = "stop"
                continue
            out[r].tokens.append(tok)
            emit(int(r), tok)
        if not active.any():
            break
        if len(out[int(np.flatnonzero(active)[0])].tokens) >= max_new_tokens:
            break
        if decoder.remaining == 0:
            for r in np.flatnonzero(active):
                out[r].finish_reason = "cache_full"
            active[:] = False
            break
        logits = decoder.step(np.where(active, tokens, decoder.pad_id))
    for r in np.flatnonzero(active):
        out[r].finish_reason = "length"
    return out
