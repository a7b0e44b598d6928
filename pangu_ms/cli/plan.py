"""`python -m pangu_ms plan --config FILE [--device 910A|910B|910B-32GB] [--devices N] [--rank R] [--json]`
`python -m pangu_ms plan --config FILE --search --devices N --device D [--global-batch B] [--top K] [--json]`
`python -m pangu_ms plan --config FILE --dry-run-commands [--json]`

Prints a parallel layout without compiling: mesh and rank layout, the pipeline stage of each
layer, every op path with its strategy, each parameter's full and per-device shape, then the
layout priced on a device: memory per pipeline stage against the device's budget, the step
time with tokens/s per device and MFU, what binds, and the device's constants with their
sources. `--search` enumerates layouts of the config's model on N devices and ranks those
that fit by predicted step time. `--dry-run-commands` prints MindSpore's dry-run command for
one rank per stage (CANN toolkit, no NPU) and what to compare in its log.
"""
from __future__ import annotations

import argparse
import json
import re
from typing import Any

from pangu_ms.cli import add_config_args

GIB = 2**30


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="show a parallel layout (strategies, memory, step time) without compiling;"
                              " search layouts", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--device", default="910A", help="device to price the layout on: 910A (default), 910B, 910B-32GB")
    p.add_argument("--devices", type=int, default=None,
                   help="plan for N devices (keeps mp and pp, scales dp); with --search: the devices to fill")
    p.add_argument("--rank", type=int, default=None, help="also show this rank's coordinates and groups")
    p.add_argument("--search", action="store_true", help="rank every layout of the model on --devices devices")
    p.add_argument("--global-batch", type=int, default=None, help="--search: rows per step (default: the config's)")
    p.add_argument("--top", type=int, default=5, help="--search: layouts to print (default 5)")
    p.add_argument("--dry-run-commands", action="store_true",
                   help="print msrun --sim_level=1 commands, one rank per pipeline stage, and what to compare")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pangu_ms.config import load_config
    from pangu_ms.errors import ConfigError

    job = load_config(args.config, args.overrides)
    if args.search:
        from pangu_ms.parallel.hardware import device_spec
        from pangu_ms.parallel.search import search

        if not args.devices:
            raise ConfigError("--search needs --devices N (the devices to fill)")
        result = search(job.model, args.devices, args.global_batch or job.train.global_batch_size,
                        device_spec(args.device), top=args.top, base=job.parallel)
        print(json.dumps(result, indent=1) if args.json else format_search(result))
        return 0
    from pangu_ms.parallel.planner import build_report

    report = build_report(job, devices=args.devices, rank=args.rank, config_path=args.config, device=args.device)
    if args.dry_run_commands:
        from pangu_ms.parallel.dryrun import dry_run_commands, format_dry_run
        from pangu_ms.parallel.planner import mesh_for_devices

        entries = dry_run_commands(mesh_for_devices(job.parallel, args.devices), args.config, list(args.overrides),
                                   memory=report["memory"])
        print(json.dumps(entries, indent=1) if args.json else format_dry_run(entries))
        return 0
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def _gb(n: float) -> str:
    return f"{n / GIB:8.2f} GiB" if n >= GIB else f"{n / 2**20:8.1f} MiB"


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
    sched = r["pipeline_scheduler"] + (f" x{r['pipeline_chunks']} chunks" if r["pipeline_chunks"] > 1 else "")
    lines = [f"mesh     {d} devices = pp {m['pp']} x dp {m['dp']} x mp {m['mp']}; micro_batches {r['micro_batches']} "
             f"({sched}), optimizer_shard {'on' if r['optimizer_shard'] else 'off'}, recompute {r['recompute']}, "
             f"loss {r['loss_cell']}",
             f"ranks    rank = stage*{per_stage} + dp*{mp} + mp (model-parallel fastest); "
             f"rank {d - 1} = stage {m['pp'] - 1}, dp {m['dp'] - 1}, mp {mp - 1}",
             f"batch    global {r['global_batch_size']} rows, {r['global_batch_size'] // m['dp']} per data-parallel "
             f"replica, {r['memory']['micro_batches']} micro-batch(es) of {r['memory']['micro_batch_rows']} row(s)"]
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
           f"seq {m['seq_length']}, {m['compute_dtype']}"]
    out += _mesh_lines(r)
    out.append("pipeline stages")
    out += _stage_lines(r)
    out.append("strategies (op path: split per input dim; '-' = no strategy, follows its input)")
    width = max(len(k) for k in r["strategies"])
    for path, s in r["strategies"].items():
        out.append(f"  {path:<{width}}  {'-' if s is None else tuple(tuple(x) for x in s)}")
    out.append("parameters (full shape -> per-device shape, stage, optimizer-shard degree)")
    rows = _collapse_params(r["parameters"])
    width = max(len(k) for k in rows)
    for name, (row, count) in rows.items():
        st = ",".join(map(str, row["stages"])) if count == 1 else "per layer"
        out.append(f"  {name:<{width}}  {tuple(row['shape'])} -> {tuple(row['local_shape'])}  stage {st}  "
                   f"shard {row['opt_shard']}")
    out += memory_lines(r)
    out += time_lines(r)
    out.append(f"binds    {r['binds']}")
    out += constant_lines(r)
    return "\n".join(out)


def _collapse_params(rows: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], int]]:
    out: dict[str, tuple[dict[str, Any], int]] = {}
    for row in rows:
        key = re.sub(r"\.blocks\.\d+\.", ".blocks.*.", row["name"])
        prev = out.get(key)
        out[key] = (row, 1 if prev is None else prev[1] + 1)
    return out


MEMORY_COLUMNS = (("weights", "weights"), ("gradients", "grads"), ("optimizer", "adam"), ("weight_copies", "w16"),
                  ("activations", "activ"), ("working_set", "rebuild"), ("head", "head"),
                  ("fragmentation", "frag"), ("framework_reserve", "reserve"), ("pool_total", "pool"),
                  ("hccl_buffers", "hccl"), ("device_total", "device"))


def memory_lines(r: dict[str, Any]) -> list[str]:
    mem = r["memory"]
    first = mem["per_stage"][0]
    lines = [f"memory per device on {r['device']} (GiB; pool budget {first['pool_budget'] / GIB:.0f}, device "
             f"{first['device_budget'] / GIB:.0f}); w16 = fp16 weight copies, activ = in-flight micro-batches x layers, "
             "rebuild = the recomputed layer",
             "  stage " + " ".join(f"{label:>8}" for _, label in MEMORY_COLUMNS) + "  in-flight  fits"]
    for st in mem["per_stage"]:
        cells = " ".join(f"{st[k] / GIB:8.2f}" for k, _ in MEMORY_COLUMNS)
        lines.append(f"  {st['stage']:>5} {cells}  {st.get('in_flight', 1):>9.1f}  {'yes' if st['fits'] else 'NO'}")
    from pangu_ms.parallel.memory import why_not_fit

    worst = mem["per_stage"][mem["heaviest_stage"]]
    verdict = "fits" if mem["fits"] else "does NOT fit: " + why_not_fit(worst)
    lines.append(f"  heaviest: stage {worst['stage']}, {worst['pool_total'] / GIB:.2f} GiB in the pool + "
                 f"{worst['hccl_buffers'] / GIB:.2f} GiB HCCL ({worst['communicators']} communicators); layout {verdict}")
    return lines


def time_lines(r: dict[str, Any]) -> list[str]:
    t = r["time"]
    if not t:
        return []
    parts = ", ".join(f"{k} {v:.3f}" for k, v in t["parts_s"].items())
    return ["step time (predicted)",
            f"  {t['step_time_s']:.3f} s per step: {parts} (s)",
            f"  {t['tokens_per_s_per_device']:.1f} tokens/s per device, MFU {t['mfu']:.1%} "
            f"({t['model_tflops_per_step']:.0f} model TFLOP per step); binds: {t['binds']}; "
            f"slowest stage {t['slowest_stage']}, {t['micro_batch_s'] * 1e3:.1f} ms per micro-batch"]


def constant_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"constants of {r['device']} (source keys: pangu_ms/parallel/hardware.py SOURCES)"]
    for c in r["device_constants"]:
        lines.append(f"  {c['name']:<22} {c['value']:>10g} {c['unit']:<8} [{c['source']}]")
    return lines


def format_search(s: dict[str, Any]) -> str:
    lines = [f"search: {s['devices']} x {s['device']}, global batch {s['global_batch']}: {s['tried']} layouts tried, "
             f"{s['fit']} fit"]
    for reason, n in s["dropped"].items():
        lines.append(f"  dropped {n:>5}: {reason}")
    lines.append(f"  {'#':>2} {'dp':>4} {'mp':>3} {'pp':>3} {'mb':>4} {'rows':>4} {'recompute':>9} {'shard':>5} "
                 f"{'table':>6} {'mem GiB':>8} {'step s':>8} {'tok/s/dev':>9} {'MFU':>6}  binds")
    for i, c in enumerate(s["top"], 1):
        lines.append(f"  {i:>2} {c['dp']:>4} {c['mp']:>3} {c['pp']:>3} {c['micro_batches']:>4} "
                     f"{c['micro_batch_rows']:>4} {c['recompute']:>9} {'on' if c['optimizer_shard'] else 'off':>5} "
                     f"{'split' if c['vocab_split'] else 'repl':>6} {c['memory_gb']:>8.1f} {c['step_time_s']:>8.3f} "
                     f"{c['tokens_per_s_per_device']:>9.0f} {c['mfu']:>6.1%}  {c['binds']}")
    lines.append("why the first wins:")
    lines += [f"  {w}" for w in s["why"]]
    return "\n".join(lines)
