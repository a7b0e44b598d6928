"""Next-token selection on the host (NumPy): penalties, temperature, top-k, top-p, seeded draws.

All functions take logits [n, V] (one row per sequence) in float32/float64.

Order of operations (as in common LLM servers): penalties -> greedy or
(temperature -> top-k -> top-p -> draw). Penalties:
- repetition r (CTRL, Keskar et al. 2019): a logit of a token already in the prompt or the
  output is divided by r when positive, multiplied by r when negative (r > 1 discourages);
- frequency f and presence p (OpenAI semantics): logit -= f * count + p * [count > 0], where
  count is how often the token occurs in the generated output so far.
Top-p keeps the smallest set of most probable tokens whose probability reaches p (the
most probable token is always kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    """softmax temperature; 0 selects the argmax."""
    top_k: int = 0
    """keep the k most probable tokens (0: no limit)."""
    top_p: float = 1.0
    """keep the smallest set of tokens whose probability reaches top_p (1.0: no limit)."""
    repetition_penalty: float = 1.0
    """CTRL penalty on tokens seen in the prompt or output (1.0: off)."""
    frequency_penalty: float = 0.0
    """subtracted per occurrence of a token in the output."""
    presence_penalty: float = 0.0
    """subtracted once from every token that occurs in the output."""
    seed: int | None = None
    """seed of the random draws (None: nondeterministic)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty}: must be > 0 (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_penalties(logits: np.ndarray, seen: np.ndarray, output_counts: np.ndarray,
                    params: SamplingParams) -> np.ndarray:
    """logits [n, V]; seen [n, V] bool (prompt or output); output_counts [n, V] -> new logits."""
    out = np.array(logits, dtype=np.float64)
    r = params.repetition_penalty
    if r != 1.0:
        out = np.where(seen, np.where(out > 0, out / r, out * r), out)
    if params.frequency_penalty:
        out = out - params.frequency_penalty * output_counts
    if params.presence_penalty:
        out = out - params.presence_penalty * (output_counts > 0)
    return out


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Set all but the k largest logits of each row to -inf (ties at the k-th value are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k:].min(axis=-1, keepdims=True)  # [n, 1]
    return np.where(logits >= kth, logits, -np.inf)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; -inf entries get probability 0."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most probable tokens whose total probability reaches p."""
    if p >= 1.0:
        return logits
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")  # [n, V] most probable first
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the tokens ranked above
    # the first token has before == 0 and is always kept; the tolerance absorbs cumsum rounding
    keep_sorted = before < p - 1e-9
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, logits, -np.inf)


def next_token_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution tokens are drawn from: temperature, then top-k, then top-p -> [n, V]."""
    z = np.asarray(logits, np.float64) / params.temperature
    z = top_p_filter(top_k_filter(z, params.top_k), params.top_p)
    return softmax(z)


class Sampler:
    """Stateful sampler for n sequences: tracks seen tokens and output counts for penalties."""

    def __init__(self, params: SamplingParams, prompts: list[list[int]], vocab_size: int):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        n = len(prompts)
        self.seen = np.zeros((n, vocab_size), bool)
        self.counts = np.zeros((n, vocab_size), np.int64)
        for r, p in enumerate(prompts):
            self.seen[r, np.asarray(p, np.int64)] = True

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits [n, V] -> chosen token ids [n] (int32); records them for the penalties."""
        z = apply_penalties(logits, self.seen, self.counts, self.params)
        if self.params.greedy:
            tokens = z.argmax(axis=-1)
        else:
            probs = next_token_probs(z, self.params)
            u = self.rng.random((probs.shape[0], 1))
            tokens = (np.cumsum(probs, axis=-1) < u).sum(axis=-1)  # inverse-CDF draw
            tokens = np.minimum(tokens, probs.shape[-1] - 1)
            # rounding can land on a zero-probability token at the end of the row
            bad = probs[np.arange(len(tokens)), tokens] == 0
            tokens[bad] = probs[bad].argmax(axis=-1)
        rows = np.arange(len(tokens))
        self.seen[rows, tokens] = True
        self.counts[rows, tokens] += 1
        return tokens.astype(np.int32)
