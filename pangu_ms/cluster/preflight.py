"""Pre-flight checks the launchers run before starting any training process.

`preflight(...)` (run by the launchers as `python -m pangu_ms preflight --config C
[--set K=V ...] (--rank-table T --server-index I | --workers N [--local-workers L])`) checks,
in order:

1. the config loads and every section validates (`load_config`);
2. the rank table parses and validates, the server index is in range and, on an Ascend host,
   the table's devices for this server exist (`/dev/davinci<id>`) (rank-table mode; a server
   id that is not one of this machine's addresses is only a warning);
3. the number of ranks (table ranks, or msrun workers) equals the config's dp*mp*pp (a config
   left at dp=mp=pp=1 runs N-way data parallel, as `pretrain` does);
4. the parallel layout fits the model and batch (`pangu_ms.parallel.validate`);
5. the prepared data exists and matches its manifest: every listed shard has a readable
   MindRecord header with rows of `seq_length + 1` ids, and the row counts add up (`check_data`).

It returns what to start on this machine, or raises a `PanguError` naming the problem;
`python -m pangu_ms preflight` turns that into the lines the shell scripts read.
"""
from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pangu_ms.config import JobConfig, load_config
from pangu_ms.errors import ConfigError, DataError
from pangu_ms.cluster.rank_table import RankTableError, load_table
from pangu_ms.cluster.sources import local_addresses
from pangu_ms.parallel.context import effective_parallel
from pangu_ms.parallel.validate import validate

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
    """dp*mp*pp == world (or a dp-only config left at 1), then the full parallel validation."""
    p = job.parallel
    if p.devices != world and p.devices != 1:
        raise ConfigError(f"the config's parallel.dp*mp*pp = {p.dp}*{p.mp}*{p.pp} = {p.devices} but {source} has "
                          f"{world} rank(s): make them equal, e.g. --set parallel.dp={max(1, world // (p.mp * p.pp))}"
                          f" (if {world} is divisible by mp*pp={p.mp * p.pp})")
    note = ""
    if p.devices != world:  # the same rule pretrain applies (pangu_ms.parallel.context.effective_parallel)
        p = effective_parallel(p, world)
        note = f" (the config's dp*mp*pp = 1 runs as {world}-way data parallel)"
    validate(job.model, p, devices=world, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps, device=job.run.device)
    return f"parallel layout: dp={p.dp} mp={p.mp} pp={p.pp} on {world} rank(s) validates{note}"


def check_local_devices(device_ids: list[int], *, dev_dir: str = "/dev") -> str:
    """On an Ascend host (`/dev/davinci_manager` present) every listed device must exist here."""
    dev = Path(dev_dir)
    if not (dev / "davinci_manager").exists():
        return "device nodes: no /dev/davinci_manager here (not an Ascend host?), not checked"
    missing = [d for d in device_ids if not (dev / f"davinci{d}").exists()]
    if missing:
        have = sorted(int(p.name[7:]) for p in dev.glob("davinci[0-9]*") if p.name[7:].isdigit())
        raise RankTableError(f"the table gives this server devices {device_ids} but {dev}/davinci{missing[0]} does "
                             f"not exist (this machine has devices {have}): check --server-index and --devices")
    return f"device nodes: {dev}/davinci{{{','.join(map(str, device_ids))}}} exist"


def warn_if_not_local(server_id: str, server_index: int) -> None:
    """Warn when the table's server id is an IP this machine does not seem to have."""
    if not all(part.isdigit() for part in server_id.split(".")):
        return
    addrs = set(local_addresses())
    try:
        addrs.update(subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split())
    except (OSError, subprocess.SubprocessError):
        pass
    if addrs and server_id not in addrs:
        log.warning("server index %d is %s, which is not among this machine's addresses (%s): "
                    "check --server-index", server_index, server_id, ", ".join(sorted(addrs)))


def check_data(job: JobConfig) -> str:
    """The data `prepare` wrote under data.output_dir is complete and is what its manifest says:
    every shard the manifest lists exists and has a readable MindRecord header whose rows are
    `model.seq_length + 1` ids, no unlisted shard sits beside them (the readers take every
    `<split>.mindrecord<k>`), and the rows per split add up to the manifest's count."""
    from pangu_ms.data.shards import MANIFEST, SPLITS, read_manifest, shard_files

    out = Path(job.data.output_dir)
    files = shard_files(out, "train")  # no manifest or no shards: the "run prepare first" error
    fix = f"re-run `python -m pangu_ms prepare --config ...` for {out}"
    try:
        manifest = read_manifest(out)
    except ValueError as exc:  # not JSON
        raise DataError(f"{out / MANIFEST}: unreadable ({str(exc).splitlines()[0]}); {fix}") from None
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict) or not isinstance(splits.get("train"), dict):
        raise DataError(f"{out / MANIFEST}: lists no train split (not written by this version's prepare?); {fix}")
    row_length = job.model.seq_length + 1
    counts = []
    for split in (s for s in SPLITS if s in splits):
        entry = splits[split]
        listed = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(listed, list) or not listed or not isinstance(entry.get("rows"), int):
            raise DataError(f"{out / MANIFEST}: split {split!r} has no file list and row count; {fix}")
        present = {str(Path(f).relative_to(out)) for f in (shard_files(out, split) if split != "train" else files)}
        extra = sorted(present - {str(Path(f)) for f in listed})
        if extra:
            raise DataError(f"{out / extra[0]} is not in {MANIFEST} (left by another prepare run?): the readers "
                            f"would train on it; delete it or {fix}")
        rows = {f: _shard_rows(out / f, row_length, fix) for f in listed}
        if sum(rows.values()) != entry["rows"]:
            found = ", ".join(f"{Path(f).name}: {n}" for f, n in rows.items())
            raise DataError(f"{out / MANIFEST} lists {entry['rows']} {split} rows but the shards hold "
                            f"{sum(rows.values())} ({found}): the shards and the manifest do not match; {fix}")
        counts.append(f"{split} {entry['rows']} rows in {len(listed)} shard(s)")
    return f"data: {', '.join(counts)} of {row_length} ids in {out}, as the manifest says"


def _shard_rows(path: Path, row_length: int, fix: str) -> int:
    """Rows stored in one MindRecord shard file, from its header (no MindSpore import): the
    file starts with the header's byte length (uint64, little endian) and the header as JSON."""
    if not path.is_file():
        raise DataError(f"{path}: listed in the manifest but missing; {fix}")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty (0 bytes): an interrupted copy or prepare; {fix}")
    try:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= min(size - 8, 1 << 26):
                raise ValueError(f"header length {length} does not fit a file of {size} bytes")
            header = json.loads(f.read(length).decode("utf-8"))
        schema = header["schema"][0]["schema"]
        shape = schema["input_ids"]["shape"]
        rows = sum(p["end_row_id"] - p["start_row_id"] for p in header["page"] if p["page_type"] == "BLOB_DATA")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: not a readable MindRecord shard ({exc}); {fix}") from None
    if shape != [row_length]:
        raise DataError(f"{path} holds rows of {shape} ids but model.seq_length={row_length - 1} needs "
                        f"[{row_length}]: use the config the data was prepared with, or {fix}")
    index = path.with_name(path.name + ".db")
    if not index.is_file() or index.stat().st_size == 0:
        raise DataError(f"{index}: the shard's index file is missing or empty; {fix}")
    return rows


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
        if job.run.device == "Ascend":
            checks.append(check_local_devices([d.device_id for d in devices]))
        warn_if_not_local(server.server_id, server_index)
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
