"""Log-probabilities of token sequences under a `PanguAlphaLM` (full forward, no cache).

`Scorer.continuation_logprobs([(context_ids, continuation_ids), ...])` returns, per item, the
log-probability of each continuation token given everything before it. Sequences are
right-padded to a multiple of `length_bucket` and batches to `batch_size` rows, so a handful
of compiled shapes serve a whole evaluation.
"""
from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn
from mindspore.ops import operations as P

from pangu_ms.data.dataset import eod_reset
from pangu_ms.models.pangu_alpha import PanguAlphaLM


class TokenLogProbs(nn.Cell):
    """(ids [B, S], position ids [B, S], document ids [B, S], targets [B, S]) -> log p(target) [B, S].

    Shares the weights of `lm` (parameter names unchanged).
    """

    def __init__(self, lm: PanguAlphaLM):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.log_softmax = P.LogSoftmax(-1)
        self.gather = P.GatherD()

    def construct(self, input_ids, position_ids, document_ids, targets):
        b, s = input_ids.shape
        logp = self.log_softmax(self.lm(input_ids, position_ids, document_ids))  # [B*S, V] fp32
        return self.gather(logp, 1, targets.reshape(-1, 1)).reshape(b, s)  # [B, S]


class SelectedLogProbs(nn.Cell):
    """(ids [B, S], position ids [B, S], document ids [B, S], rows [R], targets [R]) -> log p [R]
    of `targets` at the flattened [B*S] positions `rows`: logits only where they are needed
    (the tied vocabulary projection over every position dominates short-continuation scoring)."""

    def __init__(self, lm: PanguAlphaLM):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.log_softmax = P.LogSoftmax(-1)
        self.gather_rows = P.Gather()
        self.gather = P.GatherD()

    def construct(self, input_ids, position_ids, document_ids, rows, targets):
        h = self.gather_rows(self.lm.backbone(input_ids, position_ids, document_ids), rows, 0)  # [R, H]
        logp = self.log_softmax(self.lm.logits(h))  # [R, V]
        return self.gather(logp, 1, targets.reshape(-1, 1)).reshape(-1)  # [R]


class Scorer:
    """Batched, shape-bucketed scoring with a trained model."""

    def __init__(self, lm: PanguAlphaLM, *, batch_size: int = 8, length_bucket: int = 32):
        lm.set_train(False)
        self.cfg = lm.config
        self.net = TokenLogProbs(lm)
        self.net.set_train(False)
        self.selected = SelectedLogProbs(lm)
        self.selected.set_train(False)
        self.batch_size, self.bucket = batch_size, length_bucket

    @property
    def max_tokens(self) -> int:
        """Longest scorable sequence (context + continuation): seq_length + 1."""
        return self.cfg.seq_length + 1

    def fit(self, context: list[int], continuation: list[int]) -> list[int]:
        """context + continuation, dropping context tokens from the LEFT to fit max_tokens."""
        if not continuation:
            raise ValueError("empty continuation: nothing to score")
        room = self.max_tokens - len(continuation)
        if room < 1:
            raise ValueError(f"continuation of {len(continuation)} tokens exceeds seq_length={self.cfg.seq_length}")
        return context[-room:] + continuation if context else continuation

    def _batches(self, seqs: list[list[int]]):
        """(indices of up to batch_size sequences, padded model length S) per batch; similar
        lengths share a batch and S is rounded up to the length bucket."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            longest = max(len(seqs[i]) for i in idx) - 1
            yield idx, min(-(-longest // self.bucket) * self.bucket, self.cfg.seq_length)

    def logprobs(self, seqs: list[list[int]], *, reset_at_eod: bool = False) -> list[np.ndarray]:
        """Per sequence of n tokens (2 <= n <= max_tokens): log p(token t | tokens < t), t = 1..n-1.

        `reset_at_eod` restarts positions and attention at every <eod>, as training does
        on packed rows; prompts are scored without it.
        """
        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        for idx, s in self._batches(seqs):
            ids = np.full((self.batch_size, s + 1), self.cfg.pad_id, np.int32)
            for r, i in enumerate(idx):
                ids[r, :len(seqs[i])] = seqs[i]
            pos, doc = eod_reset(ids, self.cfg.eod_id, reset_at_eod)
            lp = self.net(Tensor(ids[:, :-1]), Tensor(pos), Tensor(doc), Tensor(ids[:, 1:])).asnumpy()
            for r, i in enumerate(idx):
                out[i] = lp[r, :len(seqs[i]) - 1].astype(np.float64)
        return out

    def continuation_logprobs(self, items: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Per (context, continuation): log-probs of the continuation tokens [len(continuation)].

        With an empty context the first continuation token is conditioned on <eod>.
        """
        seqs = [self.fit(list(ctx) or [self.cfg.eod_id], list(cont)) for ctx, cont in items]
        lengths = [len(cont) for _, cont in items]
        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        for idx, s in self._batches(seqs):
            k = max(lengths[i] for i in idx)
            ids = np.full((self.batch_size, s + 1), self.cfg.pad_id, np.int32)
            rows = np.zeros((self.batch_size, k), np.int32)  # padding rows score position 0
            targets = np.zeros((self.batch_size, k), np.int32)
            for r, i in enumerate(idx):
                n, c = len(seqs[i]), lengths[i]
                ids[r, :n] = seqs[i]
                rows[r, :c] = r * s + np.arange(n - 1 - c, n - 1)
                targets[r, :c] = seqs[i][n - c:]
            pos, doc = eod_reset(ids, self.cfg.eod_id, False)
            lp = self.selected(Tensor(ids[:, :-1]), Tensor(pos), Tensor(doc), Tensor(rows.reshape(-1)),
                               Tensor(targets.reshape(-1))).asnumpy().reshape(self.batch_size, k)
            for r, i in enumerate(idx):
                out[i] = lp[r, :lengths[i]].astype(np.float64)
        return out
