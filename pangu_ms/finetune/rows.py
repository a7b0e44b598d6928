"""Training rows for fine-tuning: prompt + label tokens, LM targets, length-bucketed batches.

Notation: N examples, B batch, K label tokens, J auxiliary LM positions per row.
"""
from __future__ import annotations

import numpy as np

from pangu_ms.data.labelled import Example
from pangu_ms.eval.tasks import TaskConfig


def lm_targets(ids: np.ndarray, first: np.ndarray, count: int, pad_id: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random positions per row inside its prompt and the tokens that follow them.

    ids [B, S] right-padded rows, first [B] the position that predicts the first label token
    (prompt tokens are ids[:, :first + 1]) -> positions [B, count] and targets [B, count]
    (pad_id for rows whose prompt is a single token).
    """
    pos = (rng.random((len(ids), count)) * first[:, None]).astype(np.int64)  # in [0, first)
    targets = np.take_along_axis(ids, pos + 1, axis=1)
    return pos.astype(np.int32), np.where(first[:, None] > 0, targets, pad_id).astype(np.int32)


def build_rows(examples: list[Example], task: TaskConfig, tok, *, max_tokens: int,
               pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded inputs [N, max_tokens], the positions predicting label tokens [N, K] and
    those label tokens [N, K] (K = longest label; shorter labels padded with pad_id)."""
    conts = {k: tok.encode(task.render("", w)[1]) for k, w in task.labels.items()}
    k_max = max(len(c) for c in conts.values())
    n = len(examples)
    ids = np.full((n, max_tokens), pad_id, np.int32)
    where = np.zeros((n, k_max), np.int32)
    labels = np.full((n, k_max), pad_id, np.int32)
    for r, e in enumerate(examples):
        c = conts[e.label]
        head = tok.encode(task.render(e.text)[0]) or [tok.eod_id]
        seq = head[-(max_tokens + 1 - len(c)):] + c  # <= max_tokens + 1 tokens
        ids[r, :len(seq) - 1] = seq[:-1]
        first = len(seq) - 1 - len(c)  # input position whose next token is c[0]
        where[r, :len(c)] = np.arange(first, first + len(c))
        labels[r, :len(c)] = c
    return ids, where, labels


def bucket_widths(buckets: list[int], max_tokens: int) -> np.ndarray:
    """The padded row widths: the entries of `buckets` below `max_tokens`, then `max_tokens`."""
    return np.array([b for b in buckets if b < max_tokens] + [max_tokens])


def length_batches(lengths: np.ndarray, batch_size: int, widths: np.ndarray, rng: np.random.Generator):
    """Endless batches (indices [batch_size], padded width) of rows grouped by length.

    Each row goes to the smallest of `widths` (increasing; the last holds every row) that holds
    it, so short reviews do not pay for the padding of long ones and each width compiles once.
    One epoch: every bucket shuffled and cut into batches (a bucket's last partial batch is
    topped up with other rows of the same bucket), the batches of all buckets shuffled.
    """
    if lengths.max() > widths[-1]:
        raise ValueError(f"a row of {lengths.max()} tokens is wider than the widest bucket {widths[-1]}")
    widths = widths[np.searchsorted(widths, lengths)]
    groups = {int(w): np.flatnonzero(widths == w) for w in np.unique(widths)}
    while True:
        epoch = []
        for w, idx in groups.items():
            idx = rng.permutation(idx)
            short = -len(idx) % batch_size
            idx = np.concatenate([idx, rng.choice(idx, short)]) if short else idx
            epoch += [(idx[i:i + batch_size], w) for i in range(0, len(idx), batch_size)]
        for k in rng.permutation(len(epoch)):
            yield epoch[k]
