"""`parallelize(model, plan, parallel)`: the only code that mutates Cells for parallelism.

It resolves the plan's logical strategies through `plans.RULES`, calls `.shard()` on every
matched primitive, sets `pipeline_stage` on cells, registers shared parameters with every
stage that uses them, marks cells for recomputation, assigns gradient fusion groups and swaps
the loss cell for the vocab-parallel one when logits are split over the vocabulary. It fails
loudly (`PlanError`) on a glob that matches nothing, on a primitive no plan entry covers, on
two entries giving one primitive different strategies and on a parameter whose shape the
strategy does not divide.
"""
from __future__ import annotations

import logging
import re

from mindspore import nn

from pangu_ms.config import ParallelConfig
from pangu_ms.errors import PanguError
from pangu_ms.parallel.plans import PARAM_CONSUMERS, Plan, resolve

log = logging.getLogger(__name__)


RECOMPUTE_WRAPPER = "_recompute_cell"


class PlanError(PanguError):
    """A shard plan does not fit the model it is applied to."""


def _prefix(model: nn.Cell) -> str:
    """Plan paths are relative to PanguAlphaWithLoss; a bare PanguAlphaLM is its `lm`."""
    return "" if hasattr(model, "lm") else "lm"


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def named_cells(model: nn.Cell) -> dict[str, nn.Cell]:
    """Plan-relative cell path -> cell."""
    pre = _prefix(model)
    # `Cell.recompute()` adds a `_recompute_cell` wrapper child: not part of the model
    return {_join(pre, name): cell for name, cell in model.cells_and_names() if RECOMPUTE_WRAPPER not in name}


def named_primitives(model: nn.Cell) -> dict[str, object]:
    """Plan-relative op path (`<cell path>.<attribute>`) -> primitive, for every named primitive."""
    out = {}
    for path, cell in named_cells(model).items():
        for attr, prim in cell._primitives.items():  # pylint: disable=protected-access
            if prim is not None:
                out[_join(path, attr)] = prim
    return out


def _applicable(glob: str, model: nn.Cell) -> bool:
    """Entries under `loss` do not apply to a bare LM, nor entries under `label_mask` to a model
    without PanGu-Coder's masked loss."""
    head = glob.split(".", 1)[0]
    if head == "label_mask":
        return hasattr(model, "label_mask")
    return bool(_prefix(model) == "" or head != "loss")


def glob_regex(glob: str) -> re.Pattern:
    """A plan glob as a regex: `*` stands for one path component (it never crosses a dot)."""
    return re.compile(re.escape(glob).replace(r"\*", r"[^.]+"))


def _match(glob: str, names: list[str], what: str) -> list[str]:
    rx = glob_regex(glob)
    hits = [n for n in names if rx.fullmatch(n)]
    if not hits:
        near = sorted(n for n in names if n.rsplit(".", 1)[-1] == glob.rsplit(".", 1)[-1])[:3]
        hint = f"; {what}s with the same last name: {', '.join(near)}" if near else ""
        raise PlanError(f"plan entry '{glob}' matches no {what} in the model{hint}")
    return hits


def _swap_loss(model: nn.Cell, plan: Plan) -> None:
    """Vocab-parallel logits need the loss whose reductions split over the vocabulary; otherwise
    the loss is the one of the model's kernel spec."""
    from pangu_ms.kernels.reference import VocabParallelCrossEntropy

    if _prefix(model) != "":
        return
    cfg = model.config
    is_vp = isinstance(model.loss, VocabParallelCrossEntropy)
    if plan.vocab_parallel_loss == is_vp:
        return
    loss = (VocabParallelCrossEntropy(cfg.pad_id, cfg.vocab_size, cfg.compute_dtype) if plan.vocab_parallel_loss
            else model.kernel_spec.lm_loss(cfg))
    log.info("parallelize: loss cell %s -> %s", type(model.loss).__name__, type(loss).__name__)
    model.loss = loss


def _apply_strategies(model: nn.Cell, plan: Plan, parallel: ParallelConfig) -> dict[str, object]:
    prims = named_primitives(model)
    names = sorted(prims)
    chosen: dict[str, object] = {}
    for glob, logical in plan.strategies.items():
        if not _applicable(glob, model):
            continue
        resolved = None if logical is None else resolve(logical, parallel)
        for path in _match(glob, names, "primitive"):
            if path in chosen and chosen[path] != resolved:
                raise PlanError(f"primitive '{path}' gets two strategies: {chosen[path]} and {resolved} ('{glob}')")
            chosen[path] = resolved
    missing = [n for n in names if n not in chosen]
    if missing:
        raise PlanError(f"{len(missing)} primitive(s) have no plan entry (give a strategy or list them as "
                        f"REPLICATED in pangu_ms/parallel/plans.py): {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    for path, strategy in chosen.items():
        if strategy is not None:
            prims[path].shard(strategy)
    return chosen


def parameter_layouts(model: nn.Cell, chosen: dict[str, object]) -> dict[str, tuple[int, ...]]:
    """Parameter name -> split degree per dimension, from the strategy of its consuming op."""
    out = {}
    for path, cell in named_cells(model).items():
        consumers = getattr(cell, "param_consumers", PARAM_CONSUMERS)
        for leaf, param in cell.parameters_and_names(expand=False):
            op, idx = consumers.get(leaf, (None, 0))
            strategy = chosen.get(_join(path, op)) if op else None
            split = tuple(strategy[idx]) if strategy is not None else (1,) * len(param.shape)
            if len(split) != len(param.shape):
                raise PlanError(f"parameter '{param.name}' has shape {tuple(param.shape)} but the strategy of "
                                f"'{_join(path, op)}' input {idx} is {split}")
            for dim, (n, k) in enumerate(zip(param.shape, split)):
                if n % k:
                    raise PlanError(f"parameter '{param.name}' dim {dim} of size {n} is not divisible by its "
                                    f"split {k} (strategy {split} from '{_join(path, op)}')")
            out[param.name] = split
    return out


def _check_tied(model: nn.Cell, chosen: dict[str, object]) -> None:
    """The tied word-embedding table must have one layout for all its users (the lookup, the
    inference head, the loss's head)."""
    lookup = chosen.get("lm.backbone.word_embedding.gather")
    for path in ("lm.vocab_proj", "loss.head.vocab_proj"):
        head = chosen.get(path)
        if lookup is not None and head is not None and tuple(lookup[0]) != tuple(head[1]):
            raise PlanError(f"tied embedding table: lookup splits it {lookup[0]} but the output head '{path}' "
                            f"splits it {head[1]}; MindSpore needs one layout per parameter")


def _apply_cells(model: nn.Cell, plan: Plan) -> None:
    cells = named_cells(model)
    names = sorted(cells)
    for glob, stage in plan.stages.items():
        if _applicable(glob, model):
            for path in _match(glob, names, "cell"):
                cells[path].pipeline_stage = stage
    params = {_join(_prefix(model), n): p for n, p in model.parameters_and_names()}
    for name, stages in plan.shared_parameters.items():
        if name not in params:
            raise PlanError(f"shared parameter '{name}' is not in the model")
        for stage in stages:
            params[name].add_pipeline_stage(stage)
    for glob in plan.recompute:
        for path in _match(glob, names, "cell"):
            cells[path].recompute()
    for glob, index in plan.comm_fusion.items():
        if _applicable(glob, model):
            for path in _match(glob, names, "cell"):
                cells[path].set_comm_fusion(index)


def parallelize(model: nn.Cell, plan: Plan, parallel: ParallelConfig) -> nn.Cell:
    """Apply `plan` on mesh `parallel` to a built PanguAlphaWithLoss (or PanguAlphaLM), in place.

    Strategies only take effect under (semi-)auto parallel on Ascend; on CPU they are set and
    can be read back (`primitive.attrs["in_strategy"]`), while recompute and fusion groups act
    in every mode. Returns `model`.
    """
    _swap_loss(model, plan)
    chosen = _apply_strategies(model, plan, parallel)
    _check_tied(model, chosen)
    parameter_layouts(model, chosen)
    _apply_cells(model, plan)
    log.info("parallelize: %d primitives (%d with a strategy), dp=%d mp=%d pp=%d",
             len(chosen), sum(s is not None for s in chosen.values()), parallel.dp, parallel.mp, parallel.pp)
    return model


LAZY_INLINE_CELLS = "lm.backbone.blocks.*"
"""The repeated blocks: compiled once as a shared sub-graph on Ascend (`mark_lazy_inline`)."""


def mark_lazy_inline(model: nn.Cell, glob: str = LAZY_INLINE_CELLS) -> list[str]:
    """Make the cells matching `glob` lazy-inline (one shared sub-graph): what decorating their
    `__init__` with `mindspore.lazy_inline` does, applied after construction so the model files
    stay free of compile hints. MindSpore's pipeline pass needs it ("should enable lazy_inline")
    and it cuts compile time for the 63-block 200B model; the key is the cell type plus the model
    config, equal for every block. Call it last: later attribute writes extend the key. Ascend
    only (MindSpore documents lazy_inline for Ascend). Returns the marked paths."""
    from mindspore import lazy_inline

    def __init__(self, key):  # noqa: N807 (lazy_inline only wraps functions named __init__)
        del self, key

    cells = named_cells(model)
    hits = _match(glob, sorted(cells), "cell")
    for path in hits:
        cell = cells[path]
        lazy_inline(__init__)(cell, f"{type(cell).__name__}:{model.config}")
    return hits


def parallelize_job(model: nn.Cell, job, info=None) -> nn.Cell:
    """`parallelize()` with the job's plan on the mesh in use (`info.parallel`, else `job.parallel`).

    The one call a training entry point needs after `init_parallel(job)`; also applies
    `job.recompute` on a single process.
    """
    from pangu_ms.parallel.plans import plan_for

    parallel = info.parallel if info is not None else job.parallel
    spec = getattr(model, "kernel_spec", None)  # the plan of the kernels the model holds
    return parallelize(model, plan_for(job.model, parallel, job.recompute, kernels=spec), parallel)
