"""MindSpore strategy files for our checkpoint layouts, written and read back.

A strategy file is the serialised `mindspore.train.node_strategy_pb2.ParallelStrategyMap`
(DESIGN.md). Each `parallel_layout_item` names a parameter and holds `dev_matrix`, `tensor_map`
(entries count from the LAST device-matrix axis, -1 = not split), `param_split_shape` and
`indices_offset` (present and empty for even splits), `field`, and the optimizer-shard pair
`opt_weight_shard_step` / `opt_weight_shard_size`.

We write, per pipeline stage, the stage-local device matrix [dp, mp] (rank order model-parallel
fastest, as MindSpore numbers devices); a dimension split over mp maps to axis 0 (mp). MindSpore's
own file for the same layout may use a longer, equivalent device matrix (e.g. [dp, 1, mp] for a
column-parallel MatMul weight); both describe the same slices. Optimizer sharding is written as
MindSpore does: size = ranks of the stage holding the same block, step = the rank distance
between them (mp for a tensor split over mp, 1 for a replicated one). With pp > 1 there is one
file per stage (`stage_<s>.ckpt`, what each rank of that stage writes) and the merged form of
`mindspore.parallel.merge_pipeline_strategys` (names prefixed `<stage>-`), which
`transform_checkpoints` needs. Only tensors named after model parameters are listed (weights and
their optimizer state); MindSpore copies the others (loss scale, counters) from rank 0.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pangu_ms.checkpoint.layout import CheckpointLayout, TensorLayout
from pangu_ms.errors import CheckpointError

MERGED_NAME = "strategy.ckpt"


def _pb():
    from mindspore.train import node_strategy_pb2

    return node_strategy_pb2


def _fill_layout(item, t: TensorLayout, layout: CheckpointLayout) -> None:
    lay = item.parallel_layouts
    lay.dev_matrix.add().dim.extend([layout.dp, layout.mp])
    lay.tensor_map.add().dim.extend([0 if k > 1 else -1 for k in t.split])
    lay.param_split_shape.add()
    lay.indices_offset.add()
    lay.field = 0
    sharded = t.opt_shard > 1
    lay.opt_weight_shard_size = t.opt_shard if sharded else 0
    lay.opt_weight_shard_step = (layout.mp if math.prod(t.split) > 1 else 1) if sharded else 0


def _listed(layout: CheckpointLayout, params: set[str]) -> list[tuple[str, TensorLayout]]:
    from pangu_ms.checkpoint.layout import base_name

    return [(n, t) for n, t in layout.tensors.items() if t.shape and base_name(n) in params]


def strategy_map(layout: CheckpointLayout, params: set[str], *, stage: int | None = None, merged: bool = False):
    """The ParallelStrategyMap of one stage (`stage`), or of all stages merged (`merged=True`)."""
    pb = _pb()
    out = pb.ParallelStrategyMap()
    stages = range(layout.pp) if merged else [stage or 0]
    out.current_stage = 1 if merged else (stage or 0)
    for s in stages:
        item = out.parallel_strategy_item.add()
        item.node_name = f"pangu_ms.checkpoint.stage{s}"
        item.parallel_strategys.stage = s
        for name, t in _listed(layout, params):
            if s not in t.stages:
                continue
            li = out.parallel_layout_item.add()
            li.param_name = f"{s}-{name}" if merged else name
            _fill_layout(li, t, layout)
    return out


def write_strategy_files(step_dir: Path, layout: CheckpointLayout, params: set[str]) -> list[Path]:
    """`strategy.ckpt` (merged over stages when pp > 1) and, with pp > 1, `strategy/stage_<s>.ckpt`."""
    written = [_write(step_dir / MERGED_NAME, strategy_map(layout, params, stage=0, merged=layout.pp > 1))]
    if layout.pp > 1:
        for s in range(layout.pp):
            written.append(_write(step_dir / "strategy" / f"stage_{s}.ckpt", strategy_map(layout, params, stage=s)))
    return written


def _write(path: Path, msg) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(msg.SerializeToString())
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class StrategyEntry:
    """One parameter's layout as a strategy file states it."""

    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    opt_step: int
    opt_size: int
    stage: int

    def split(self) -> tuple[int, ...]:
        """Split degree per tensor dimension."""
        return tuple(1 if m == -1 else self.dev_matrix[len(self.dev_matrix) - 1 - m] for m in self.tensor_map)

    def region(self, rank_in_stage: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """The slice of a tensor of full `shape` that device `rank_in_stage` of the stage holds."""
        dev = self.dev_matrix
        coord, r = [], rank_in_stage
        for n in reversed(dev):
            coord.insert(0, r % n)
            r //= n
        split = self.split()
        index = [0 if m == -1 else coord[len(dev) - 1 - m] for m in self.tensor_map]
        out = [slice(i * (n // k), (i + 1) * (n // k)) for n, k, i in zip(shape, split, index)]
        if self.opt_size > 0 and shape:
            used = {len(dev) - 1 - m for m in self.tensor_map if m != -1}
            same = [d for d in range(math.prod(dev)) if self._block_coords(d, used) == self._block_coords(
                rank_in_stage, used)]
            if len(same) != self.opt_size:
                raise CheckpointError(f"optimizer-shard size {self.opt_size} differs from the {len(same)} devices "
                                      "holding the same block: not supported")
            piece = (out[0].stop - out[0].start) // self.opt_size
            start = out[0].start + same.index(rank_in_stage) * piece
            out[0] = slice(start, start + piece)
        return tuple(out)

    def _block_coords(self, device: int, used: set[int]) -> tuple[int, ...]:
        coord, r = [], device
        for n in reversed(self.dev_matrix):
            coord.insert(0, r % n)
            r //= n
        return tuple(c for axis, c in enumerate(coord) if axis in used)


def read_strategy_file(path: str | Path) -> dict[str, StrategyEntry]:
    """Parameter name -> its entry; merged pipeline files (`<stage>-<name>`) give one entry per
    name with the lowest stage. Raises CheckpointError for a file that is not a strategy map."""
    pb = _pb()
    msg = pb.ParallelStrategyMap()
    try:
        msg.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise CheckpointError(f"{path}: not a MindSpore strategy file ({exc})") from None
    stage0 = msg.parallel_strategy_item[0].parallel_strategys.stage if msg.parallel_strategy_item else 0
    out: dict[str, StrategyEntry] = {}
    for item in msg.parallel_layout_item:
        name, stage = item.param_name, stage0
        head, sep, rest = name.partition("-")
        if sep and head.isdigit():
            name, stage = rest, int(head)
        lay = item.parallel_layouts
        if len(lay.tensor_map) > 1 or any(len(m.dim) == 0 for m in lay.dev_matrix[:1]):
            raise CheckpointError(f"{path}: parameter '{name}' uses a nested layout, which is not supported")
        entry = StrategyEntry(dev_matrix=tuple(lay.dev_matrix[0].dim), tensor_map=tuple(lay.tensor_map[0].dim),
                              opt_step=int(lay.opt_weight_shard_step), opt_size=int(lay.opt_weight_shard_size),
                              stage=stage)
        if name not in out or stage < out[name].stage:
            out[name] = entry
    if not out:
        raise CheckpointError(f"{path}: the strategy file lists no parameter layouts")
    return out


def compare_with_strategy(layout: CheckpointLayout, path: str | Path, rank: int) -> list[str]:
    """Tensors whose slice on `rank` differs between `layout` and a strategy file (MindSpore's own,
    written when it compiled the step): one line each, empty when they agree."""
    per_stage = layout.dp * layout.mp
    out = []
    for name, entry in read_strategy_file(path).items():
        t = layout.tensors.get(name)
        if t is None or layout.region(rank, name) is None:
            continue
        try:
            theirs = entry.region(rank % per_stage, t.shape)
        except CheckpointError as exc:
            out.append(f"{name}: cannot compare ({exc})")
            continue
        ours = layout.region(rank, name)
        if theirs != ours:
            out.append(f"{name}: strategy {_fmt(theirs)} vs ours {_fmt(ours)}")
    return out


def _fmt(region: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"
