"""The one collective checkpointing needs: a sum over all ranks of a few float flags.

It serves as the barrier before rank 0 writes a step's manifest (every rank reports whether its
own files were written) and as the agreement on which step to resume from (every rank reports
which candidate steps it can load). A compiled Cell holding `ops.AllReduce` is what runs on the
CPU backend under msrun (float32 only; the functional `comm_func.all_reduce` has no CPU kernel,
checked 2026-12-01). A single process needs no communication.
"""
from __future__ import annotations

import numpy as np


class RankSum:
    """`RankSum(world_size)(values) -> values summed over ranks` (identity for one process)."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._cell = None

    def __call__(self, values: list[float]) -> list[float]:
        if self.world_size <= 1:
            return [float(v) for v in values]
        import mindspore as ms

        if self._cell is None:
            self._cell = _all_reduce_cell()
        out = self._cell(ms.Tensor(np.asarray(values, np.float32)))
        return [float(v) for v in out.asnumpy()]


def _all_reduce_cell():
    from mindspore import nn, ops

    class _AllReduce(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce()

        def construct(self, x):
            return self.all_reduce(x)

    return _AllReduce()
