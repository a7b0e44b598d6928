"""`python -m pangu_ms pretrain --config FILE [--set k=v] [--out DIR] [--resume DIR]`.

Trains PanGu-alpha on the MindRecord shards `prepare` wrote (data.output_dir). Under
`msrun --worker_num=N` each worker trains its data-parallel share of the global batch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pangu_ms.cli import add_config_args

    p = subparsers.add_parser("pretrain", help="pretrain PanGu-alpha (single process or under msrun)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--out", default=None, help="run directory (overrides run.output_dir)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the newest good checkpoint under DIR (a run dir, its checkpoints/ "
                        "or one step_XXXXXXXX dir); the run directory defaults to DIR's run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and metrics only)")
    p.set_defaults(func=run)
    return p


def _run_dir_of(resume: str) -> str:
    from pangu_ms.train.checkpoint import STEP_RE

    path = Path(resume)
    if STEP_RE.match(path.name):
        return str(path.parent.parent)
    if path.name == "checkpoints":
        return str(path.parent)
    return str(path)


def run(args: argparse.Namespace) -> int:
    from pangu_ms.config import load_config
    from pangu_ms.train.loop import pretrain
    from pangu_ms.train.metrics import summary_text

    overrides = list(args.overrides)
    out = args.out or (_run_dir_of(args.resume) if args.resume else None)
    if out:
        overrides.append(f"run.output_dir={out}")
    job = load_config(args.config, overrides)
    summary = pretrain(job, resume=args.resume, progress=not args.no_progress)
    if summary.get("rank", 0) == 0:
        print(summary_text(summary))
        print(f"summary: {Path(job.run.output_dir) / 'summary.json'}")
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
    return 0
