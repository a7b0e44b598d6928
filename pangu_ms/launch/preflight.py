"""Pre-flight checks the launchers run before starting any training process.

`python -m pangu_ms.launch.preflight --config C [--set K=V ...] (--rank-table T --server-index I |
--workers N [--local-workers L])` checks, in order:

1. the config loads and every section validates (`load_config`);
2. the rank table parses and validates, and the server index is in range (rank-table mode);
3. the number of ranks (table ranks, or msrun workers) equals the config's dp*mp*pp;
4. the parallel layout fits the model and batch (`pangu_ms.parallel.validate`);
5. the prepared training data exists (`pangu_ms.data.prepare.shard_files`).

On success it prints, for the shell, `RANK_SIZE=<n>`, `SERVER_ID=<id>` and one line
`RANK <rank_id> <device_id>` per local device (rank-table mode), and a summary on stderr.
On failure it prints one `error: ...` line and exits 2, before anything was started.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from dataclasses import dataclass, field

from pangu_ms.config import JobConfig, load_config
from pangu_ms.errors import ConfigError, DataError, PanguError
from pangu_ms.launch.rank_table import load_table

log = logging.getLogger(__name__)


@dataclass
class LaunchPlan:
    """What a launcher starts on this machine."""

    rank_size: int
    """total ranks in the job (all servers)."""
    local: list[tuple[int, int]] = field(default_factory=list)
    """(rank_id, device_id) of each process to start here (rank-table mode)."""
    server_id: str | None = None
    """this server's id in the rank table."""
    checks: list[str] = field(default_factory=list)
    """one line per check that passed, for the log."""


def check_layout(job: JobConfig, world: int, source: str) -> str:
    """dp*mp*pp == world, then the full parallel validation (model, batch, backend)."""
    p = job.parallel
    if p.devices != world:
        raise ConfigError(f"the config's parallel.dp*mp*pp = {p.dp}*{p.mp}*{p.pp} = {p.devices} but {source} has "
                          f"{world} rank(s): make them equal, e.g. --set parallel.dp={max(1, world // (p.mp * p.pp))}"
                          f" (if {world} is divisible by mp*pp={p.mp * p.pp})")
    try:
        from pangu_ms.parallel.validate import validate
    except ImportError:  # hook: the parallel package is optional for launching
        return f"devices: dp*mp*pp = {p.devices} = {source} ranks (parallel.validate not available)"
    validate(job.model, p, devices=world, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps, device=job.run.device)
    return f"parallel layout: dp={p.dp} mp={p.mp} pp={p.pp} on {world} rank(s) validates"


def check_data(job: JobConfig) -> str:
    """The training shards `prepare` wrote under data.output_dir exist."""
    out = job.data.output_dir
    try:
        from pangu_ms.data.prepare import shard_files
    except ImportError:
        files = sorted(f for f in glob.glob(os.path.join(out, "train", "train.mindrecord*")) if not f.endswith(".db"))
        if not files:
            raise DataError(f"no training shards in {os.path.join(out, 'train')}: "
                            "run `python -m pangu_ms prepare --config ...` first") from None
    else:
        files = shard_files(out, "train")
    return f"data: {len(files)} training shard(s) in {out}"


def preflight(*, config: str, overrides: list[str] | None = None, rank_table: str | None = None,
              server_index: int | None = None, workers: int | None = None, local_workers: int | None = None,
              data: bool = True) -> LaunchPlan:
    """Run every check; return what to start here or raise a `PanguError` naming the problem."""
    job = load_config(config, overrides or [])
    checks = [f"config: {config} validates (run.device={job.run.device})"]
    if rank_table is not None:
        if server_index is None:
            raise ConfigError("--server-index is required with --rank-table (0 for the first server in the table)")
        table = load_table(rank_table)
        devices = table.server_ranks(server_index)
        server = table.servers[server_index]
        plan = LaunchPlan(rank_size=table.rank_size, local=[(d.rank_id, d.device_id) for d in devices],
                          server_id=server.server_id)
        checks.append(f"rank table: {rank_table} (version {table.version}, {len(table.servers)} server(s), "
                      f"{table.rank_size} ranks); server {server_index} = {server.server_id}, devices "
                      f"{[d.device_id for d in devices]} -> ranks {devices[0].rank_id}..{devices[-1].rank_id}")
        source = f"the rank table {rank_table}"
    else:
        world = job.parallel.devices if workers is None else workers
        if world < 1:
            raise ConfigError(f"--workers {world}: must be >= 1")
        if local_workers is not None and not 1 <= local_workers <= world:
            raise ConfigError(f"--local-workers {local_workers}: must be between 1 and the worker count {world}")
        plan = LaunchPlan(rank_size=world)
        source = "the msrun job"
    checks.append(check_layout(job, plan.rank_size, source))
    if data:
        checks.append(check_data(job))
    plan.checks = checks
    return plan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pangu_ms.launch.preflight", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as given to pretrain (repeatable)")
    p.add_argument("--rank-table", help="HCCL rank table (run_distributed.sh)")
    p.add_argument("--server-index", type=int, help="this server's position in the rank table (0-based)")
    p.add_argument("--workers", type=int, help="msrun worker count (default: the config's dp*mp*pp)")
    p.add_argument("--local-workers", type=int, help="msrun workers on this node")
    p.add_argument("--no-data-check", action="store_true", help="skip the training-data check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
