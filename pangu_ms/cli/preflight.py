"""`python -m pangu_ms preflight --config RUN.yaml (--rank-table T --server-index I | --workers N)`.

The check the launchers (`launch/run_distributed.sh`, `launch/run_msrun.sh`) run before
starting any process. Exit 2 with one `error: pre-flight: ...` line on stderr when a check
fails; otherwise the passed checks on stderr and, on stdout for the shell scripts,
`RANK_SIZE=N`, `SERVER_ID=...` and one `RANK <rank> <device>` line per local process. The
checks live in `pangu_ms.cluster.preflight`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pangu_ms.cli import add_config_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("preflight", help="the launchers' pre-flight check (config, rank table, data)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--rank-table", help="HCCL rank table (run_distributed.sh)")
    p.add_argument("--server-index", type=int, help="this server's position in the rank table (0-based)")
    p.add_argument("--workers", type=int, help="msrun worker count (default: the config's dp*mp*pp)")
    p.add_argument("--local-workers", type=int, help="msrun workers on this node")
    p.add_argument("--no-data-check", action="store_true", help="skip the training-data check")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pangu_ms.cluster.preflight import preflight
    from pangu_ms.errors import PanguError

    logging.getLogger().setLevel(logging.WARNING)  # stdout is parsed by the shell: only problems on stderr
    try:
        plan = preflight(config=args.config, overrides=args.overrides, rank_table=args.rank_table,
                         server_index=args.server_index, workers=args.workers, local_workers=args.local_workers,
                         data=not args.no_data_check)
    except PanguError as exc:
        print(f"error: pre-flight: {exc}", file=sys.stderr)
        return 2
    for line in plan.checks:
        print(f"pre-flight ok: {line}", file=sys.stderr)
    print(f"RANK_SIZE={plan.rank_size}")
    if plan.server_id is not None:
        print(f"SERVER_ID={plan.server_id}")
    for rank, device in plan.local:
        print(f"RANK {rank} {device}")
    return 0
