"""`python -m pangu_ms checkpoint merge|reshard|inspect ...`: per-rank checkpoints on any machine.

    checkpoint merge   --ckpt DIR --out DIR                    one full (single-rank) checkpoint
    checkpoint reshard --ckpt DIR --to-config RUN.yaml --out DIR   the slices RUN.yaml's layout needs
    checkpoint inspect DIR [--verify] [--json]                 layout, steps, completeness, sizes

`--ckpt` takes a run dir, its checkpoints/ dir or one step_XXXXXXXX dir (the newest complete
step is used). Merge and reshard are pure NumPy and stream tensor by tensor (peak memory about
the largest tensor); the optimizer state comes along. The output is a run directory that
`generate`, `eval`, `finetune` and `pretrain --resume` read.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("checkpoint", help="merge, reshard or inspect per-rank checkpoints",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    m = sub.add_parser("merge", help="merge every rank's slices into one full checkpoint")
    m.add_argument("--ckpt", required=True, help="run dir, its checkpoints/ dir or one step_XXXXXXXX dir")
    m.add_argument("--out", required=True, help="output run directory (gets checkpoints/step_XXXXXXXX/)")
    r = sub.add_parser("reshard", help="re-slice a checkpoint for another parallel layout")
    r.add_argument("--ckpt", required=True, help="run dir, its checkpoints/ dir or one step_XXXXXXXX dir")
    r.add_argument("--out", required=True, help="output run directory (gets checkpoints/step_XXXXXXXX/)")
    r.add_argument("--to-config", dest="config", required=True, help="run config YAML of the target layout")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the target config, e.g. --set parallel.mp=4 (repeatable)")
    i = sub.add_parser("inspect", help="show layout, steps, completeness and per-rank sizes")
    i.add_argument("path", help="run dir, its checkpoints/ dir or one step_XXXXXXXX dir")
    i.add_argument("--verify", action="store_true", help="also check every file's sha256 (reads every byte)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    for sp in (m, r, i):
        sp.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.action == "inspect":
        from pangu_ms.checkpoint.report import format_report, inspect_checkpoints

        report = inspect_checkpoints(args.path, verify=args.verify)
        print(json.dumps(report, indent=1) if args.json else format_report(report))
        return 0 if report["newest_complete"] is not None else 1
    from pathlib import Path

    from pangu_ms.checkpoint.inference import newest_complete
    from pangu_ms.checkpoint.reshard import merge, reshard

    src = newest_complete(args.ckpt)
    t0 = time.perf_counter()
    if args.action == "merge":
        out = merge(src, Path(args.out))
    else:
        from pangu_ms.config import load_config
        from pangu_ms.parallel.validate import validate

        job = load_config(args.config, args.overrides)
        validate(job.model, job.parallel, devices=job.parallel.devices, global_batch=job.train.global_batch_size,
                 grad_accum_steps=job.train.grad_accum_steps)
        out = reshard(src, job, Path(args.out))
    print(f"{args.action}: {src} -> {out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    print(out)
    return 0
