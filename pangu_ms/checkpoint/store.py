"""Step directories of per-rank checkpoints: layout on disk, completeness, listing, pruning.

    <run>/checkpoints/step_00000100/
        rank_<r>/model.safetensors   rank r's slices under MindSpore's names (or model.ckpt)
        rank_<r>/rank.json           rank, mesh coordinates, step, file sizes and sha256
        layout.json                  the checkpoint layout (`pangu_ms.checkpoint.layout`)
        strategy.ckpt                the same layout as a MindSpore strategy file (+ strategy/ per stage)
        meta.json                    step, data position, tokens seen, loss, format, world size
        config.yaml                  the resolved JobConfig
        tokenizer/                   a copy of the tokenizer directory
        manifest.json                written last, by rank 0, after every rank reported its files

Each rank writes `rank_<r>/` under a temporary name and renames it into place; rank 0 writes
the shared files the same way, then, after a barrier at which every rank reports success,
`manifest.json` (every file with its size and sha256). A step is complete only with the manifest
and every file it lists at its listed size; checksums are verified when a rank loads its files.
The layout is MindSpore's own for per-rank files: `transform_checkpoints(step_dir, ...)` reads
`rank_<r>/*.safetensors` (or `*.ckpt`) with `strategy.ckpt`.

Step directories written before per-rank checkpoints (`model.ckpt` or `model.safetensors` next to
`meta.json`) still load: they are one-rank checkpoints.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pangu_ms.checkpoint.layout import CheckpointLayout
from pangu_ms.checkpoint.safetensors_io import file_sha256
from pangu_ms.errors import CheckpointError

logger = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step_(\d{8})$")
RANK_RE = re.compile(r"^rank_(\d+)$")
WEIGHT_FILES = {"ckpt": "model.ckpt", "safetensors": "model.safetensors"}
MANIFEST, LAYOUT, META, CONFIG, RANK_META, TOKENIZER = (
    "manifest.json", "layout.json", "meta.json", "config.yaml", "rank.json", "tokenizer")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_dir_name(rank: int) -> str:
    return f"rank_{rank}"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(step_dir: Path) -> int:
    return int(STEP_RE.match(step_dir.name).group(1))


def list_step_dirs(path: str | Path) -> list[Path]:
    """Step directories under a run dir, a checkpoints dir, or the step dir itself; newest first."""
    path = Path(path)
    if STEP_RE.match(path.name) and path.is_dir():
        return [path]
    for root in (path / "checkpoints", path):
        if root.is_dir():
            dirs = sorted((p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name)), key=step_of,
                          reverse=True)
            if dirs:
                return dirs
    return []


def write_json(path: Path, data: Any) -> None:
    """JSON written to a temporary file and renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ({exc})") from None


def legacy_weights(step_dir: Path) -> Path | None:
    """The single weights file of a pre-per-rank step directory, if this is one."""
    for name in WEIGHT_FILES.values():
        if (step_dir / name).is_file():
            return step_dir / name
    return None


def rank_weights(step_dir: Path, rank: int) -> Path:
    d = step_dir / rank_dir_name(rank)
    for name in WEIGHT_FILES.values():
        if (d / name).is_file():
            return d / name
    raise CheckpointError(f"{d}: no model.safetensors or model.ckpt (rank {rank}'s files are missing: the step is "
                          "incomplete)")


def read_layout(step_dir: Path) -> CheckpointLayout:
    return CheckpointLayout.from_dict(read_json(step_dir / LAYOUT))


# --------------------------------------------------------------------------- completeness


@dataclass
class StepStatus:
    """What `check_step` found in one step directory."""

    path: Path
    step: int
    complete: bool
    problems: list[str] = field(default_factory=list)
    """why the step is incomplete (missing manifest, missing or resized files, bad checksums)."""
    world_size: int = 1
    legacy: bool = False
    rank_bytes: dict[int, int] = field(default_factory=dict)
    """bytes on disk per rank (the files its rank_<r>/ holds); a rank without a directory is absent."""
    manifest: dict[str, Any] = field(default_factory=dict)


def check_step(step_dir: Path, *, verify_ranks: list[int] | None = None) -> StepStatus:
    """Completeness of one step: manifest present, every listed file at its listed size, and the
    sha256 of the files of `verify_ranks` (all ranks for `verify_ranks=[-1]`)."""
    status = StepStatus(path=step_dir, step=step_of(step_dir), complete=False)
    legacy = legacy_weights(step_dir)
    if legacy is not None and not (step_dir / MANIFEST).exists():
        status.legacy = True
        status.rank_bytes = {0: legacy.stat().st_size}
        status.complete = (step_dir / META).is_file()
        if not status.complete:
            status.problems.append("meta.json missing")
        return status
    if not (step_dir / MANIFEST).is_file():
        status.problems.append("no manifest.json (the save did not finish on every rank)")
        status.rank_bytes = _present_rank_bytes(step_dir)
        return status
    try:
        manifest = read_json(step_dir / MANIFEST)
        files: dict[str, dict[str, Any]] = manifest["files"]
        status.world_size = int(manifest["world_size"])
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        status.problems.append(f"manifest.json unreadable ({exc})")
        return status
    status.manifest = manifest
    verify = set(range(status.world_size)) if verify_ranks == [-1] else set(verify_ranks or ())
    for rel, info in files.items():
        status.problems += _check_file(step_dir, rel, info, verify_sum=_rank_of(rel) in verify)
    listed = {_rank_of(rel) for rel in files} - {None}
    if listed != set(range(status.world_size)):
        status.problems.append(f"the manifest lists files of ranks {sorted(listed)}, not 0..{status.world_size - 1}")
    status.rank_bytes = _present_rank_bytes(step_dir)
    status.complete = not status.problems
    return status


def _rank_of(rel: str) -> int | None:
    m = RANK_RE.match(rel.split("/", 1)[0])
    return int(m.group(1)) if m else None


def _present_rank_bytes(step_dir: Path) -> dict[int, int]:
    out = {}
    for d in step_dir.iterdir():
        m = RANK_RE.match(d.name)
        if m and d.is_dir():
            out[int(m.group(1))] = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    return out


def _check_file(step_dir: Path, rel: str, info: dict[str, Any], *, verify_sum: bool) -> list[str]:
    path = step_dir / rel
    if not path.is_file():
        return [f"{rel} is missing"]
    size = path.stat().st_size
    if size != int(info["bytes"]):
        return [f"{rel} has {size} bytes, the manifest says {info['bytes']} (truncated or replaced)"]
    if verify_sum and file_sha256(path) != info["sha256"]:
        return [f"{rel}: sha256 differs from the manifest (corrupt)"]
    return []


def verify_rank_files(status: StepStatus, rank: int) -> list[str]:
    """sha256 of rank `rank`'s files against the manifest (a legacy step checks nothing here: its
    `.ckpt` carries its own crc)."""
    if status.legacy:
        return []
    problems = []
    for rel, info in status.manifest.get("files", {}).items():
        if _rank_of(rel) == rank:
            problems += _check_file(status.path, rel, info, verify_sum=True)
    return problems


# --------------------------------------------------------------------------- writing


@dataclass
class StepWriter:
    """Writes one step directory from one rank (see the module docstring for the protocol)."""

    root: Path
    """the checkpoints directory."""
    step: int
    rank: int
    world_size: int
    layout: CheckpointLayout
    fmt: str = "safetensors"

    @property
    def step_dir(self) -> Path:
        return self.root / step_dir_name(self.step)

    def begin(self) -> None:
        """Make the step directory; drop a stale manifest so a re-written step reads as incomplete."""
        self.step_dir.mkdir(parents=True, exist_ok=True)
        (self.step_dir / MANIFEST).unlink(missing_ok=True)

    def write_rank(self, write_weights: Callable[[Path], dict[str, Any] | None]) -> Path:
        """`write_weights(file)` writes this rank's tensors (and may return more facts for
        rank.json); then rank.json; then the rename."""
        tmp = self.rank_tmp(self.rank)
        extra = write_weights(tmp / WEIGHT_FILES[self.fmt])
        return self.commit_rank(self.rank, tmp, extra=extra)

    def rank_tmp(self, rank: int) -> Path:
        """A fresh temporary directory for rank `rank`'s files."""
        tmp = self.step_dir / f".{rank_dir_name(rank)}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_rank(self, rank: int, tmp: Path, sums: dict[str, str] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
        """Describe the weights in `tmp` in rank.json (sha256 from `sums` or computed) and rename
        `tmp` to `rank_<rank>/`."""
        weights = tmp / WEIGHT_FILES[self.fmt]
        sha = (sums or {}).get(weights.name) or file_sha256(weights)
        c = self.layout.coords(rank)
        info = {"rank": rank, "step": self.step, "coords": {"stage": c.stage, "dp": c.dp, "mp": c.mp},
                "mesh": self.layout.mesh(), "files": {weights.name: {"bytes": weights.stat().st_size, "sha256": sha}},
                **(extra or {})}
        write_json(tmp / RANK_META, info)
        _fsync_dir(tmp)
        final = self.step_dir / rank_dir_name(rank)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def write_shared(self, *, meta: dict[str, Any], config_yaml: str | None, tokenizer_dir: str | None,
                     params: set[str]) -> None:
        """Rank 0's files: layout.json, strategy files, meta.json, config.yaml, tokenizer/."""
        from pangu_ms.checkpoint.strategy import write_strategy_files

        d = self.step_dir
        write_json(d / LAYOUT, self.layout.to_dict())
        write_strategy_files(d, self.layout, params)
        write_json(d / META, {**meta, "format": self.fmt, "world_size": self.world_size, "layout": LAYOUT})
        if config_yaml is not None:
            tmp = d / f".{CONFIG}.tmp{os.getpid()}"
            tmp.write_text(config_yaml, encoding="utf-8")
            os.replace(tmp, d / CONFIG)
        copy_tokenizer(tokenizer_dir, d / TOKENIZER)

    def write_manifest(self) -> Path:
        """After the barrier: every rank's rank.json plus the shared files, hashed, as manifest.json."""
        d = self.step_dir
        files: dict[str, dict[str, Any]] = {}
        ranks = {}
        for r in range(self.world_size):
            info = read_json(d / rank_dir_name(r) / RANK_META)
            if info.get("step") != self.step:
                raise CheckpointError(f"{d / rank_dir_name(r)}: rank.json is for step {info.get('step')}, "
                                      f"not {self.step}")
            ranks[str(r)] = info["coords"]
            for name, f in info["files"].items():
                files[f"{rank_dir_name(r)}/{name}"] = f
            files[f"{rank_dir_name(r)}/{RANK_META}"] = _describe(d / rank_dir_name(r) / RANK_META)
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d).as_posix()
            if p.is_file() and not rel.startswith("rank_") and rel != MANIFEST and not p.name.startswith("."):
                files[rel] = _describe(p)
        write_json(d / MANIFEST, {"step": self.step, "world_size": self.world_size, "format": self.fmt,
                                  "mesh": self.layout.mesh(), "ranks": ranks, "files": files, "time": time.time()})
        _fsync_dir(d)
        return d / MANIFEST


def _describe(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def copy_tokenizer(src: str | None, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    if src and Path(src).is_dir():
        shutil.copytree(src, dst)
    elif src:
        logger.warning("tokenizer directory %r not found: checkpoint saved without a tokenizer copy", src)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete whole steps older than the `keep_last` newest complete ones; returns what went."""
    dirs = list_step_dirs(root)
    complete = [d for d in dirs if (d / MANIFEST).is_file() or legacy_weights(d) is not None]
    if len(complete) < keep_last:
        return []
    oldest_kept = step_of(complete[keep_last - 1])
    gone = [d for d in dirs if step_of(d) < oldest_kept]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    _fsync_dir(root)
    return gone
