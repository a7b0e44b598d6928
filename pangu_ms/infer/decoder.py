"""Host-side driver of the two cached graphs: padding, slots, positions, the length limit.

`IncrementalDecoder(lm, batch_size=B, max_length=M)` compiles one prompt graph per padded
prompt length (lengths are rounded up to `prompt_bucket`, so a handful of shapes cover all
prompts) and one step graph, and reuses them for every request.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import mindspore as ms
import numpy as np
from mindspore import Tensor

from pangu_ms.errors import PanguError
from pangu_ms.infer.kv_cache import DecoderCore, KVCache, PrefillCell, StepCell
from pangu_ms.models.pangu_alpha import PanguAlphaLM

log = logging.getLogger(__name__)


class GenerationError(PanguError, ValueError):
    """A generation request does not fit the decoder (too many prompts, prompt too long...)."""


class CacheFullError(GenerationError):
    """The K/V cache has no free slot left for another token."""


def left_pad(prompts: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad prompts to `length` -> ids [n, length], position ids [n, length], pad_len [n] (int32).

    Positions count from each row's first real token (padding slots get position 0).
    """
    n = len(prompts)
    ids = np.full((n, length), pad_id, np.int32)
    pos = np.zeros((n, length), np.int32)
    pad = np.zeros(n, np.int32)
    for r, p in enumerate(prompts):
        pad[r] = length - len(p)
        ids[r, pad[r]:] = p
        pos[r, pad[r]:] = np.arange(len(p))
    return ids, pos, pad


class IncrementalDecoder:
    """Cached decoding for up to `batch_size` prompts at a time, at most `max_length` slots.

    `start(prompts)` -> logits [n, V] of each prompt's next token; `step(tokens [n])` feeds
    one token per row and returns the logits of the next. Rows are left-padded to a common
    prompt length (see `pangu_ms.infer.kv_cache`), so a row's budget for new tokens is
    `max_length` minus the padded prompt length. `fused_kernels` (default) runs the step graph
    with fused kernels (`pangu_ms.kernels`), `cpu_kernels` the C++ matrix-vector ones among
    them; off, the step graph uses the reference compositions (the training model's ops).
    """

    def __init__(self, lm: PanguAlphaLM, *, batch_size: int = 1, max_length: int | None = None,
                 prompt_bucket: int = 16, fused_kernels: bool = True, cpu_kernels: bool = True):
        cfg = lm.config
        self.max_length = int(max_length or cfg.seq_length)
        if not 1 <= self.max_length <= cfg.seq_length:
            raise GenerationError(f"max_length={self.max_length}: must be in [1, model seq_length={cfg.seq_length}] "
                                  "(the position table has seq_length rows)")
        if batch_size < 1:
            raise GenerationError(f"batch_size={batch_size}: must be >= 1")
        lm.set_train(False)
        self.lm, self.batch_size, self.prompt_bucket = lm, batch_size, max(1, prompt_bucket)
        self.pad_id = cfg.pad_id
        self.core = DecoderCore(lm, self.max_length, batch_size=batch_size, fused_kernels=fused_kernels,
                                cpu_kernels=cpu_kernels)
        self.cache = KVCache(cfg.num_layers, batch_size, cfg.num_heads, self.max_length, cfg.head_dim)
        self.prefill = PrefillCell(self.core, self.cache)
        self.step_cell = StepCell(self.core, self.cache)
        self.prefill.set_train(False)
        self.step_cell.set_train(False)
        self._run_step = None  # set by the first step (see _step_launcher)
        self.slot = 0  # next free cache slot
        self.rows = 0
        self._pad = Tensor(np.zeros(batch_size, np.int32))
        self._pad_np = np.zeros(batch_size, np.int32)

    @property
    def remaining(self) -> int:
        """Tokens that can still be fed with `step` before the cache is full."""
        return self.max_length - self.slot

    def padded_length(self, longest: int) -> int:
        """Prompt length after rounding up to the bucket (capped at max_length)."""
        return min(-(-longest // self.prompt_bucket) * self.prompt_bucket, self.max_length)

    def start(self, prompts: list[list[int]]) -> np.ndarray:
        """Run the prompts (1 <= n <= batch_size, each non-empty) -> next-token logits [n, V]."""
        n = len(prompts)
        if not 1 <= n <= self.batch_size:
            raise GenerationError(f"{n} prompts: this decoder takes 1..{self.batch_size} at a time")
        if any(len(p) == 0 for p in prompts):
            raise GenerationError("empty prompt: give at least one token (e.g. the <eod> id)")
        longest = max(len(p) for p in prompts)
        if longest > self.max_length:
            raise GenerationError(f"prompt of {longest} tokens does not fit max_length={self.max_length}: "
                                  "shorten it or raise --max-length (up to the model's seq_length)")
        s = self.padded_length(longest)
        # unused batch rows get a one-token dummy prompt; their outputs are dropped
        rows = list(prompts) + [[self.pad_id]] * (self.batch_size - n)
        ids, pos, pad = left_pad(rows, s, self.pad_id)
        self._pad_np = pad
        self._pad = Tensor(pad)
        logits = self.prefill(Tensor(ids), Tensor(pos), self._pad).asnumpy()
        self.slot, self.rows = s, n
        return logits[:n]

    def step(self, tokens: np.ndarray | list[int]) -> np.ndarray:
        """Feed one token per row (shape [n]) -> logits [n, V] of the following token."""
        if self.slot >= self.max_length:
            raise CacheFullError(f"the K/V cache is full ({self.max_length} slots): no room for another token")
        tokens = np.asarray(tokens, np.int32).reshape(-1)
        if tokens.shape[0] != self.rows:
            raise GenerationError(f"step got {tokens.shape[0]} tokens for {self.rows} rows")
        ids = np.full((self.batch_size, 1), self.pad_id, np.int32)
        ids[: self.rows, 0] = tokens
        pos = (self.slot - self._pad_np).reshape(-1, 1).astype(np.int32)
        args = (Tensor(ids), Tensor(pos), Tensor(self.slot, ms.int32), self._pad)
        if self._run_step is None:
            logits = self.step_cell(*args)  # compiles the step graph
            self._run_step = _step_launcher(self.step_cell)
        else:
            logits = self._run_step(*args)
        self.slot += 1
        return logits.asnumpy()[: self.rows]


def _step_launcher(cell: StepCell) -> Callable[..., Tensor]:
    """A function running the compiled graph of `cell` with the same arguments as `cell(...)`.

    `Cell.__call__` re-inspects the arguments and recomputes the compile key on every call,
    about 0.5 ms: 15% of a tiny-model decoding step. The step graph's inputs never change
    shape, so after its first call the graph executor runs it directly. That executor is
    MindSpore's private API (pinned 2.10): if it is missing, the Cell call is used.
    """
    try:
        from mindspore.graph.api import _cell_graph_executor
    except ImportError:  # pragma: no cover - another MindSpore layout
        return cell
    if not callable(_cell_graph_executor) or not isinstance(getattr(cell, "phase", None), str):
        return cell  # pragma: no cover
    return functools.partial(_cell_graph_executor, cell, phase=cell.phase)
