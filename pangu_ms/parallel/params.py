"""PanGu-alpha's parameters per device, from the shapes alone: the planner's weight table.

`parameter_rows(model, parallel)` lists every parameter of `PanguAlphaWithLoss(model)` with
its full shape, its split per dimension under the paper's layout (plans.py: column-parallel
Q/K/V/fc1 weights and biases split on the output dimension over mp, row-parallel attention
output and fc2 weights split on the input dimension, the word table split over the
vocabulary when it is vocab-split), its per-device shape, the pipeline stages holding it and
its optimizer-sharding degree. Nothing is built, so the search can price thousands of layouts;
tests compare these rows with the ones read back from a built, parallelized model.

Optimizer sharding (MindSpore's parallel optimizer, `AutoParallel.hsdp()`): a parameter is
stored and updated as a 1/k slice, k the number of devices of its stage that hold the same
slice (dp for an mp-split weight, dp*mp for a replicated one), when its per-device first
dimension divides by k and the per-device slice is at least the 64 KB threshold.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pangu_ms.config import ModelConfig, ParallelConfig
from pangu_ms.parallel.plans import stage_of_layer

OPT_SHARD_THRESHOLD_BYTES = 64 * 1024
"""`AutoParallel.hsdp(threshold=64)` (KB): smaller per-device slices are not sharded."""


@dataclass(frozen=True)
class ParamRow:
    """One parameter: where it lives and how it is split."""

    name: str
    shape: tuple[int, ...]
    split: tuple[int, ...]
    stages: tuple[int, ...]
    """pipeline stages holding a copy (the tied word table: the first and the last)."""
    shard: int
    """optimizer-sharding degree k (1: not sharded)."""

    @property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(n // k for n, k in zip(self.shape, self.split))

    @property
    def local_numel(self) -> int:
        return math.prod(self.local_shape)

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "split": list(self.split),
                "local_shape": list(self.local_shape), "stages": list(self.stages),
                "opt_sharded": self.shard > 1, "opt_shard": self.shard}


def opt_shard_degree(local_shape: tuple[int, ...], split: tuple[int, ...], parallel: ParallelConfig,
                     *, bytes_per_element: int = 4) -> int:
    """Devices sharing this slice's optimizer state (1 when sharding is off or does not apply)."""
    if not parallel.optimizer_shard or not local_shape:
        return 1
    k = parallel.dp * parallel.mp // math.prod(split)
    if k <= 1 or local_shape[0] % k or math.prod(local_shape) * bytes_per_element < OPT_SHARD_THRESHOLD_BYTES:
        return 1
    return k


def _layer_params(prefix: str, m: ModelConfig, mp: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    h, f = m.hidden_size, m.ffn_hidden_size
    out = [(f"{prefix}.ln1.gamma", (h,), (1,)), (f"{prefix}.ln1.beta", (h,), (1,))]
    for name in ("linear_q", "linear_k", "linear_v"):  # column-parallel
        out += [(f"{prefix}.attention.{name}.weight", (h, h), (1, mp)), (f"{prefix}.attention.{name}.bias", (h,), (mp,))]
    out += [(f"{prefix}.attention.linear_out.weight", (h, h), (mp, 1)),  # row-parallel
            (f"{prefix}.attention.linear_out.bias", (h,), (1,)),
            (f"{prefix}.ln2.gamma", (h,), (1,)), (f"{prefix}.ln2.beta", (h,), (1,)),
            (f"{prefix}.ffn.linear_fc1.weight", (h, f), (1, mp)), (f"{prefix}.ffn.linear_fc1.bias", (f,), (mp,)),
            (f"{prefix}.ffn.linear_fc2.weight", (f, h), (mp, 1)), (f"{prefix}.ffn.linear_fc2.bias", (h,), (1,))]
    return out


def vocab_split(parallel: ParallelConfig) -> bool:
    """The word table is split over the vocabulary (pipelining forces it; plans.py)."""
    return parallel.pp > 1 or not parallel.vocab_emb_dp


def parameter_rows(model: ModelConfig, parallel: ParallelConfig) -> list[ParamRow]:
    """Every parameter of `PanguAlphaWithLoss(model)` under `parallel`, in model order."""
    m, mp, last = model, parallel.mp, parallel.pp - 1
    bb = "lm.backbone"
    stages = stage_of_layer(m.num_layers, parallel.pp, parallel.pipeline_chunks)
    word_split = (mp, 1) if vocab_split(parallel) else (1, 1)
    entries: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = [
        (f"{bb}.word_embedding.embedding_table", (m.vocab_size, m.hidden_size), word_split,
         (0, last) if parallel.pp > 1 else (0,)),
        (f"{bb}.position_embedding.embedding_table", (m.seq_length, m.hidden_size), (1, 1), (0,)),
        (f"{bb}.top_query_embedding.embedding_table", (m.seq_length, m.hidden_size), (1, 1), (last,)),
    ]
    for i in range(m.num_layers - 1):
        entries += [(n, s, k, (stages[i],)) for n, s, k in _layer_params(f"{bb}.blocks.{i}", m, mp)]
    entries += [(f"{bb}.final_ln.gamma", (m.hidden_size,), (1,), (last,)),
                (f"{bb}.final_ln.beta", (m.hidden_size,), (1,), (last,))]
    entries += [(n, s, k, (last,)) for n, s, k in _layer_params(f"{bb}.query_layer", m, mp)]
    rows = []
    for name, shape, split, held in entries:
        local = tuple(n // k for n, k in zip(shape, split))
        rows.append(ParamRow(name, shape, split, held, opt_shard_degree(local, split, parallel)))
    return rows


@dataclass(frozen=True)
class StageParams:
    """What one device of a stage holds: elements per device and as stored (after sharding)."""

    local: int
    """per-device elements (the forward's view, and the gradients)."""
    stored: int
    """elements stored and updated (local divided by each parameter's optimizer-sharding degree)."""
    max_shard: int
    """largest optimizer-sharding degree among them (> dp: a replicated weight sharded over dp*mp)."""


_CACHE: dict[tuple, list[StageParams]] = {}


def stage_params(model: ModelConfig, parallel: ParallelConfig) -> list[StageParams]:
    """`StageParams` of every stage, from `parameter_rows` (cached: the search asks many times)."""
    p = parallel
    key = (dataclasses.astuple(model), p.dp, p.mp, p.pp, p.pipeline_chunks, p.optimizer_shard, vocab_split(p))
    if key not in _CACHE:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        acc = [[0, 0, 1] for _ in range(p.pp)]
        for r in parameter_rows(model, parallel):
            for st in r.stages:
                acc[st][0] += r.local_numel
                acc[st][1] += r.local_numel // r.shard
                acc[st][2] = max(acc[st][2], r.shard)
        _CACHE[key] = [StageParams(*a) for a in acc]
    return _CACHE[key]


def layer_local_numel(model: ModelConfig, mp: int) -> int:
    """Per-device parameters of one layer (block or query layer)."""
    return sum(math.prod(s) // math.prod(k) for _, s, k in _layer_params("x", model, mp))
