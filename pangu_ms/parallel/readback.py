"""Read what `parallelize()` did back from a built model, as plain JSON-able data.

Everything here comes from the Cells and primitives themselves (`primitive.attrs
["in_strategy"]`, `cell.pipeline_stage`, the recompute wrapper, `parameter.comm_fusion`), not
from the plan, so golden files compare what the framework will see. Per-block entries that
agree across all blocks are collapsed to `blocks.*` to keep the tables readable; a block that
differs shows up under its own index.
"""
from __future__ import annotations

import re
from typing import Any

from mindspore import nn

from pangu_ms.parallel.apply import RECOMPUTE_WRAPPER, named_cells, named_primitives

_BLOCK = re.compile(r"\.blocks\.(\d+)(?=\.|$)")


def collapse_blocks(table: dict[str, Any]) -> dict[str, Any]:
    """{'...blocks.3.x': v} -> {'...blocks.*.x': v} where every block has the same v."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        groups.setdefault(_BLOCK.sub(".blocks.*", key), {})[key] = value
    out: dict[str, Any] = {}
    for pattern, members in groups.items():
        values = list(members.values())
        if pattern != next(iter(members)) and all(v == values[0] for v in values):
            out[pattern] = values[0]
        else:
            out.update(members)
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _as_lists(strategy: Any) -> list[list[int]] | None:
    return None if strategy is None else [list(s) for s in strategy]


def read_strategies(model: nn.Cell) -> dict[str, list[list[int]] | None]:
    """Op path -> in_strategy as lists (None: no strategy set), every primitive."""
    return {path: _as_lists(prim.attrs.get("in_strategy")) for path, prim in named_primitives(model).items()}


def read_stages(model: nn.Cell) -> dict[str, int]:
    """Cell path -> pipeline stage, for cells whose stage was set."""
    out = {}
    for path, cell in named_cells(model).items():
        stage = getattr(cell, "pipeline_stage", None)
        if stage is not None:
            out[path] = stage
    return out


def read_recompute(model: nn.Cell) -> list[str]:
    """Cells on which `recompute()` was called."""
    pre = "" if hasattr(model, "lm") else "lm"
    suffix = "." + RECOMPUTE_WRAPPER
    return [".".join(x for x in (pre, name[: -len(suffix)]) if x)
            for name, _ in model.cells_and_names() if name.endswith(suffix)]


def _layer_of(name: str) -> str:
    """Parameter name -> its layer (`...blocks.5`, `...query_layer`) or owning cell."""
    m = re.match(r"(.*?\.(?:blocks\.\d+|query_layer))\.", name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def read_comm_fusion(model: nn.Cell) -> dict[str, int | list[int]]:
    """Layer or cell -> gradient fusion index of its trainable parameters (a list if mixed)."""
    per: dict[str, set[int]] = {}
    for p in model.trainable_params():
        per.setdefault(_layer_of(_full_name(model, p.name)), set()).add(int(p.comm_fusion))
    return {k: (next(iter(v)) if len(v) == 1 else sorted(v)) for k, v in per.items()}


def _full_name(model: nn.Cell, name: str) -> str:
    return name if hasattr(model, "lm") or name.startswith("lm.") else f"lm.{name}"


def read_shared(model: nn.Cell) -> dict[str, list[int]]:
    """Parameter -> extra pipeline stages it was registered with (tied weights)."""
    out = {}
    for p in model.get_parameters():
        stages = list(getattr(p, "_pipeline_stage_list", []) or [])
        if stages:
            out[_full_name(model, p.name)] = stages
    return out


def read_back(model: nn.Cell) -> dict[str, Any]:
    """The applied parallel state of `model`, collapsed over identical blocks."""
    loss = getattr(model, "loss", None)
    return {
        "loss_cell": type(loss).__name__ if loss is not None else None,
        "strategies": collapse_blocks(read_strategies(model)),
        "stages": collapse_blocks(read_stages(model)),
        "shared_parameters": read_shared(model),
        "recompute": sorted(collapse_blocks({c: True for c in read_recompute(model)}), key=_natural),
        "comm_fusion": collapse_blocks(read_comm_fusion(model)),
    }


def read_lazy_inline(model: nn.Cell) -> dict[str, str]:
    """Cell path -> its lazy-inline key, for cells `mark_lazy_inline` (or `@lazy_inline`) marked."""
    out = {}
    for path, cell in named_cells(model).items():
        key = getattr(cell, "_cell_init_args", None)
        if isinstance(key, str) and key.startswith("lazy_inline_"):
            out[path] = key
    return out
