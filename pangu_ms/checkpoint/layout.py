"""Which slice of which tensor each rank holds: the one place that computes it.

A checkpoint layout is the mesh (pp, dp, mp, rank order model-parallel fastest as in
`pangu_ms.parallel.layout.RankLayout`) plus, for every tensor a training rank saves, its full
shape, dtype, model-parallel split per dimension, optimizer-shard count and the pipeline stages
whose ranks hold it. The splits come from OUR plan (`plan_for` + `parallelize` on a model built
without weight memory, read back with `parameter_table`), never from a second hand-written table.

Slice of rank r (stage s, dp index d, mp index m) of a tensor held on stage s:
    every dimension split k > 1 (k == mp: the plan splits parameters only over `heads`, `ffn`
    and `vocab`) takes the m-th of k equal blocks;
    with optimizer sharding (MindSpore's parallel optimizer) dimension 0 of that block is cut
    again into g equal pieces, g = the ranks of the stage that hold the same block
    (dp for a tensor split over mp, dp*mp for one replicated over mp), and the rank takes the
    piece of its index among them (d, or d*mp + m).
A tensor is optimizer-sharded when optimizer_shard is on, its block's first dimension divides
by g and the block is at least `OPT_SHARD_THRESHOLD_BYTES` (MindSpore's default threshold).

Optimizer state and accumulators (`adam_m.X`, `adam_v.X`, `accum.X`, `accu_grads.X`) take the
layout of X; every other tensor (loss scale, step counters, `step`, `data_step`) is whole on
every rank of every stage.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from pangu_ms.errors import CheckpointError
from pangu_ms.parallel.layout import RankCoords, RankLayout

OPT_SHARD_THRESHOLD_BYTES = 64 * 1024
STATE_PREFIXES = ("adam_m.", "adam_v.", "accum.", "accu_grads.")
"""prefixes of tensors that share the layout of the parameter they are named after."""

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1}


def itemsize(dtype: str) -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise CheckpointError(f"tensor dtype {dtype!r} is not supported in checkpoints (use one of "
                              f"{', '.join(_ITEMSIZE)})") from None


@dataclass(frozen=True)
class TensorLayout:
    """One tensor of a checkpoint and how the ranks split it."""

    shape: tuple[int, ...]
    """full (unsplit) shape."""
    dtype: str
    """numpy-style dtype name (float32, int32, bfloat16, ...)."""
    split: tuple[int, ...]
    """model-parallel split degree per dimension (1 or mp)."""
    opt_shard: int = 1
    """pieces dimension 0 of the model-parallel block is cut into by optimizer sharding (1: none)."""
    stages: tuple[int, ...] = (0,)
    """pipeline stages whose ranks hold this tensor."""

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape after the model-parallel split, before optimizer sharding."""
        return tuple(n // k for n, k in zip(self.shape, self.split))

    @property
    def local_shape(self) -> tuple[int, ...]:
        """Shape one rank stores."""
        block = self.block_shape
        return (block[0] // self.opt_shard,) + block[1:] if block else block

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


@dataclass(frozen=True)
class CheckpointLayout:
    """The mesh and every tensor's layout: what `rank_region` answers from."""

    dp: int = 1
    mp: int = 1
    pp: int = 1
    optimizer_shard: bool = False
    """MindSpore's parallel optimizer was on (opt_shard > 1 somewhere)."""
    tensors: dict[str, TensorLayout] = field(default_factory=dict)
    """tensor name (as MindSpore saves it) -> layout, in save order."""

    @property
    def world_size(self) -> int:
        return self.dp * self.mp * self.pp

    @property
    def ranks(self) -> RankLayout:
        return RankLayout(dp=self.dp, mp=self.mp, pp=self.pp)

    def coords(self, rank: int) -> RankCoords:
        return self.ranks.coords(rank)

    def mesh(self) -> dict[str, Any]:
        return {"dp": self.dp, "mp": self.mp, "pp": self.pp, "optimizer_shard": self.optimizer_shard}

    def names_on(self, rank: int) -> list[str]:
        """Tensors rank `rank` saves, in layout order."""
        stage = self.coords(rank).stage
        return [n for n, t in self.tensors.items() if stage in t.stages]

    def region(self, rank: int, name: str) -> tuple[slice, ...] | None:
        """The part of the full tensor `name` that `rank` holds (None: its stage holds none)."""
        t = self.tensors[name]
        c = self.coords(rank)
        if c.stage not in t.stages:
            return None
        out = []
        for dim, (n, k) in enumerate(zip(t.shape, t.split)):
            size = n // k
            start = (c.mp if k > 1 else 0) * size
            if dim == 0 and t.opt_shard > 1:
                piece = size // t.opt_shard
                start += self.opt_index(t, c) * piece
                size = piece
            out.append(slice(start, start + size))
        return tuple(out)

    def opt_index(self, t: TensorLayout, c: RankCoords) -> int:
        """Index of a rank among the ranks of its stage holding the same model-parallel block."""
        return c.dp if math.prod(t.split) > 1 else c.dp * self.mp + c.mp

    def holders(self, name: str, region: tuple[slice, ...]) -> list[tuple[int, tuple[slice, ...]]]:
        """(rank, its region) for one rank per distinct stored piece that overlaps `region`."""
        seen: dict[tuple, int] = {}
        for rank in range(self.world_size):
            r = self.region(rank, name)
            if r is None or not _overlaps(r, region):
                continue
            key = tuple((s.start, s.stop) for s in r)
            seen.setdefault(key, rank)
        return [(rank, tuple(slice(a, b) for a, b in key)) for key, rank in seen.items()]

    def to_dict(self) -> dict[str, Any]:
        return {**self.mesh(), "tensors": {n: {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in asdict(t).items()} for n, t in self.tensors.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckpointLayout":
        try:
            tensors = {n: TensorLayout(shape=tuple(t["shape"]), dtype=t["dtype"], split=tuple(t["split"]),
                                       opt_shard=int(t.get("opt_shard", 1)), stages=tuple(t.get("stages", (0,))))
                       for n, t in d["tensors"].items()}
            return cls(dp=int(d["dp"]), mp=int(d["mp"]), pp=int(d["pp"]),
                       optimizer_shard=bool(d.get("optimizer_shard", False)), tensors=tensors)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint layout is malformed ({exc!r}); was it written by pangu_ms?") from None

    def compatible(self, other: "CheckpointLayout") -> list[str]:
        """Why a rank of `other` cannot load this layout's rank files as they are (empty: it can)."""
        if self.mesh() != other.mesh():
            return [f"mesh {self.mesh()} vs {other.mesh()}"]
        return [f"'{n}' is {t} vs {other.tensors[n]}" for n, t in self.tensors.items()
                if n in other.tensors and other.tensors[n] != t]

    def is_whole(self) -> bool:
        """Every rank holds every tensor whole (one process, or data parallel only)."""
        return self.pp == 1 and all(math.prod(t.split) == 1 and t.opt_shard == 1 for t in self.tensors.values())


def _overlaps(a: tuple[slice, ...], b: tuple[slice, ...]) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


def intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))


def relative(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """`inner` (absolute) as a region of the block that starts at `outer`."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def base_name(name: str) -> str:
    """`adam_m.lm.x` -> `lm.x`; other names unchanged."""
    for prefix in STATE_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# --------------------------------------------------------------------------- from the plan


@dataclass(frozen=True)
class ParamPlan:
    """What the plan says about one model parameter."""

    shape: tuple[int, ...]
    split: tuple[int, ...]
    stages: tuple[int, ...]


def plan_parameters(model_cfg, parallel) -> dict[str, ParamPlan]:
    """Model parameter name (as in `PanguAlphaWithLoss`) -> split and stages under `parallel`.

    Builds the model without weight memory and applies the plan, as `plan` does, so a paper-size
    model costs seconds and a few hundred MB.
    """
    from mindspore import nn

    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
    from pangu_ms.parallel.apply import parallelize
    from pangu_ms.parallel.planner import parameter_table
    from pangu_ms.parallel.plans import plan_for
    from pangu_ms.parallel.readback import read_shared, read_stages, read_strategies

    with nn.utils.no_init_parameters():
        model = PanguAlphaWithLoss(model_cfg)
    # the plan for the kernels the model was built with (parameter names are the same for all)
    parallelize(model, plan_for(model_cfg, parallel, kernels=model.kernel_spec), parallel)
    chosen = {k: (None if v is None else tuple(tuple(x) for x in v)) for k, v in read_strategies(model).items()}
    rows = parameter_table(model, chosen, read_stages(model), read_shared(model), parallel)
    return {r["name"]: ParamPlan(tuple(r["shape"]), tuple(r["split"]), tuple(r["stages"])) for r in rows}


def _opt_shard(block: tuple[int, ...], split: tuple[int, ...], dtype: str, dp: int, mp: int, on: bool) -> int:
    group = dp * mp // math.prod(split)
    if not on or group <= 1 or not block or block[0] % group:
        return 1
    return group if math.prod(block) * itemsize(dtype) >= OPT_SHARD_THRESHOLD_BYTES else 1


def build_layout(entries: Iterable[tuple[str, tuple[int, ...], str]], params: dict[str, ParamPlan], *,
                 dp: int = 1, mp: int = 1, pp: int = 1, optimizer_shard: bool = False) -> CheckpointLayout:
    """Layout of the tensors `entries` ((name, full shape, dtype) in save order) under a plan.

    A tensor named after a plan parameter (directly or through a `STATE_PREFIXES` prefix) must
    have that parameter's shape; every other tensor is whole on every rank of every stage.
    """
    for name, value in (("dp", dp), ("mp", mp), ("pp", pp)):
        if value < 1:
            raise CheckpointError(f"layout {name}={value} must be >= 1")
    all_stages = tuple(range(pp))
    tensors: dict[str, TensorLayout] = {}
    for name, shape, dtype in entries:
        shape = tuple(int(n) for n in shape)
        plan = params.get(base_name(name))
        if plan is None:
            tensors[name] = TensorLayout(shape=shape, dtype=dtype, split=(1,) * len(shape), stages=all_stages)
            continue
        if plan.shape != shape:
            raise CheckpointError(f"tensor '{name}' has shape {shape} but the model config gives "
                                  f"'{base_name(name)}' the shape {plan.shape}: the checkpoint is for another model")
        for k in plan.split:
            if k not in (1, mp):
                raise CheckpointError(f"tensor '{name}': the plan splits it {plan.split}, but checkpoint layouts "
                                      f"support splits over mp={mp} only")
        block = tuple(n // k for n, k in zip(shape, plan.split))
        opt = _opt_shard(block, plan.split, dtype, dp, mp, optimizer_shard)
        tensors[name] = TensorLayout(shape=shape, dtype=dtype, split=plan.split, opt_shard=opt, stages=plan.stages)
    return CheckpointLayout(dp=dp, mp=mp, pp=pp, optimizer_shard=optimizer_shard, tensors=tensors)


def layout_for(model_cfg, parallel, entries: Iterable[tuple[str, tuple[int, ...], str]]) -> CheckpointLayout:
    """`build_layout` with the plan of `model_cfg` on mesh `parallel` (a `ParallelConfig`)."""
    return build_layout(entries, plan_parameters(model_cfg, parallel), dp=parallel.dp, mp=parallel.mp,
                        pp=parallel.pp, optimizer_shard=parallel.optimizer_shard)
