"""`python -m pangu_ms plan --config FILE [--devices N] [--rank R] [--json]`.

Prints a parallel layout without compiling: mesh and rank layout, the pipeline stage of each
layer, every op path with its strategy, each parameter's full and per-device shape, and
per-device weight, gradient and optimizer-state memory with and without optimizer sharding.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from pangu_ms.cli import add_config_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="show a parallel layout (strategies, stages, memory) without compiling",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--devices", type=int, default=None,
                   help="plan for N devices (keeps mp and pp, scales dp); default: the config's dp*mp*pp")
    p.add_argument("--rank", type=int, default=None, help="also show this rank's coordinates and groups")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pangu_ms.config import load_config
    from pangu_ms.parallel.planner import build_report

    job = load_config(args.config, args.overrides)
    report = build_report(job, devices=args.devices, rank=args.rank, config_path=args.config)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 0


def _gb(n: int) -> str:
    return f"{n / 2**30:8.2f} GiB" if n >= 2**30 else f"{n / 2**20:8.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _ranges(idx: list[int]) -> str:
    """[0,1,2,5] -> '0-2, 5'."""
    out, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def _stage_lines(r: dict[str, Any]) -> list[str]:
    pp, stages = r["mesh"]["pp"], r["stage_of_layer"]
    n = len(stages)
    lines = []
    for s in range(pp):
        layers = [i for i, st in enumerate(stages) if st == s]
        parts = []
        if s == 0:
            parts.append("word+position embedding")
        blocks = [i for i in layers if i < n - 1]
        if blocks:
            parts.append(f"blocks {_ranges(blocks)}")
        if s == pp - 1:
            parts.append(f"final LayerNorm, query layer (layer {n - 1}), top query embedding, head, loss")
            if pp > 1:
                parts.append("tied embedding table shared with stage 0")
        lines.append(f"  stage {s:>2}: " + "; ".join(parts))
    return lines


def _mesh_lines(r: dict[str, Any]) -> list[str]:
    m, d = r["mesh"], r["devices"]
    per_stage, mp = m["dp"] * m["mp"], m["mp"]
    lines = [f"mesh     {d} devices = pp {m['pp']} x dp {m['dp']} x mp {m['mp']}; micro_batches {r['micro_batches']}, "
             f"optimizer_shard {'on' if r['optimizer_shard'] else 'off'}, recompute {r['recompute']}, "
             f"loss {r['loss_cell']}",
             f"ranks    rank = stage*{per_stage} + dp*{mp} + mp (model-parallel fastest); "
             f"rank {d - 1} = stage {m['pp'] - 1}, dp {m['dp'] - 1}, mp {mp - 1}",
             f"batch    global {r['global_batch_size']} rows, {r['global_batch_size'] // m['dp']} per data-parallel "
             f"replica in {r['micro_batches']} micro-batch(es)"]
    if "coords" in r:
        c, g = r["coords"], r["groups"]
        lines.append(f"rank {r['rank']}  stage {c['stage']}, dp {c['dp']}, mp {c['mp']}")
        for name in ("mp", "dp", "pp"):
            lines.append(f"  {name} group: {_short(g[name])}")
    return lines


def _short(ranks: list[int]) -> str:
    return str(ranks) if len(ranks) <= 16 else f"[{', '.join(map(str, ranks[:8]))}, ..., {ranks[-1]}] ({len(ranks)})"


def format_report(r: dict[str, Any]) -> str:
    m = r["model"]
    out = [f"PanGu-alpha plan{': ' + r['config'] if r.get('config') else ''}",
           f"model    {_count(r['params'])} parameters ({r['params']:,}): {m['num_layers']} layers, hidden "
           f"{m['hidden_size']}, ffn {m['ffn_hidden_size']}, heads {m['num_heads']}, vocab {m['vocab_size']}, "
           f"seq {m['seq_length']}"]
    out += _mesh_lines(r)
    out.append("pipeline stages")
    out += _stage_lines(r)
    out.append("strategies (op path: split per input dim; '-' = no strategy, follows its input)")
    width = max(len(k) for k in r["strategies"])
    for path, s in r["strategies"].items():
        out.append(f"  {path:<{width}}  {'-' if s is None else tuple(tuple(x) for x in s)}")
    out.append("parameters (full shape -> per-device shape, stage)")
    rows = _collapse_params(r["parameters"])
    width = max(len(k) for k in rows)
    for name, (row, count) in rows.items():
        st = ",".join(map(str, row["stages"])) if count == 1 else "per layer"
        out.append(f"  {name:<{width}}  {tuple(row['shape'])} -> {tuple(row['local_shape'])}  stage {st}")
    out += _memory_lines(r)
    return "\n".join(out)


def _collapse_params(rows: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], int]]:
    import re

    out: dict[str, tuple[dict[str, Any], int]] = {}
    for row in rows:
        key = re.sub(r"\.blocks\.\d+\.", ".blocks.*.", row["name"])
        prev = out.get(key)
        out[key] = (row, 1 if prev is None else prev[1] + 1)
    return out


def _memory_lines(r: dict[str, Any]) -> list[str]:
    lines = ["memory per device (fp32 weights, fp32 gradients, Adam m+v; activations not counted)",
             f"  {'stage':>5} {'weights':>12} {'gradients':>12} {'optimizer':>12} {'total':>12}   "
             f"| sharded over dp: {'weights':>12} {'optimizer':>12} {'total':>12}"]
    for m in r["per_stage_bytes"]:
        tot = m["weights"] + m["gradients"] + m["optimizer"]
        tot_sh = m["weights_sharded"] + m["gradients"] + m["optimizer_sharded"]
        lines.append(f"  {m['stage']:>5} {_gb(m['weights'])} {_gb(m['gradients'])} {_gb(m['optimizer'])} "
                     f"{_gb(tot)}   |                  {_gb(m['weights_sharded'])} {_gb(m['optimizer_sharded'])} "
                     f"{_gb(tot_sh)}")
    p = r["per_device_bytes"]
    lines.append(f"  as configured (optimizer_shard {'on' if r['optimizer_shard'] else 'off'}), "
                 f"{'rank ' + str(r['rank']) if 'rank' in r else 'heaviest stage'} (stage {p['stage']}): "
                 f"{_gb(p['total']).strip()}")
    return lines
