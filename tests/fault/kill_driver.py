"""Fault injection from outside the process: run a `python -m pangu_ms` command as a child
process and SIGKILL it at a chosen or random moment, judged only from what it writes.

A kill point is a trigger and a confirmation. The trigger (`trigger()`, polled every
millisecond) notices that the child may be at the point wanted (a temporary checkpoint entry
appeared, the train record of an evaluation step was logged, ...). The child is then frozen
with SIGSTOP and `confirm()` inspects its files while nothing moves: if the child is really
at that point, confirm returns a description and the child is SIGKILLed; if it has already
moved past it, the child gets SIGCONT and the trigger is polled again. Nothing runs inside
the child: no hook, no flag, no environment variable.

The checkpoint reading (`step_dirs`, `checkpoint_digest`) goes through the package's public
loading functions and is kept here, in one place, so that a new checkpoint format needs only
these two functions adapted.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STEP_DIR = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------- the child process


@dataclass
class Child:
    """One `python -m pangu_ms ...` process, its output in `log` (stdout) and `log.err`."""

    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the child's whole process group (tokenizer workers, msrun workers too)."""
        if self.alive:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return Path(f"{self.log}.err").read_text(errors="replace")


def start(args: list[str], log: Path, env: dict | None = None, prefix: list[str] | None = None) -> Child:
    """Start `[prefix...] python -m pangu_ms *args` with stdout to `log` and stderr to `log.err`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*(prefix or []), sys.executable, "-m", "pangu_ms", *args]
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "GLOG_v": "3", **(env or {})},
                                start_new_session=True)
    return Child(proc, log)


def kill_when(child: Child, trigger: Callable[[], bool], confirm: Callable[[], str | None], *,
              timeout: float = 300, poll: float = 0.001, sig: int = signal.SIGKILL) -> str | None:
    """Poll `trigger`; on True freeze the child and ask `confirm`. A description from confirm:
    send `sig` (SIGKILL), reap and return it. None: SIGCONT and go on polling. Returns None if the child
    exits (or the timeout passes) before a confirmed kill."""
    deadline = time.monotonic() + timeout
    while child.alive and time.monotonic() < deadline:
        if trigger():
            child.signal(signal.SIGSTOP)
            try:
                what = confirm()
            except BaseException:
                child.signal(signal.SIGKILL)
                raise
            if what is not None:
                child.signal(sig)
                if sig != signal.SIGKILL:
                    child.signal(signal.SIGCONT)  # a stopped process acts on SIGTERM once resumed
                child.wait()
                _reap_group(child)
                return what
            child.signal(signal.SIGCONT)
        time.sleep(poll)
    return None


def _reap_group(child: Child) -> None:
    """SIGKILL what is left of the child's process group (workers outlive a killed parent)."""
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(child: Child, predicate: Callable[[], bool], *, timeout: float = 300, poll: float = 0.001) -> bool:
    """Poll `predicate` (the child keeps running) until True; False if the child exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not child.alive:
            return predicate()
        time.sleep(poll)
    return False


def kill_after(child: Child, delay: float, describe: Callable[[], str], *, sig: int = signal.SIGKILL) -> str | None:
    """Freeze the child `delay` seconds from now, describe where it stands (`describe()` on the
    frozen child), send `sig` (SIGKILL). None if it exited before."""
    deadline = time.monotonic() + delay
    return kill_when(child, lambda: time.monotonic() >= deadline, describe, timeout=delay + 600, sig=sig)


# --------------------------------------------------------------------------- what a run has written


def records(run: Path) -> list[dict]:
    """Every complete record of run/metrics.jsonl in file order (a resumed run appends; a
    kill can at most cut the last line short, which is returned as {"kind": "partial"})."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"kind": "partial", "text": line})
    return out


def final_records(run: Path, kind: str) -> dict[int, dict]:
    """step -> the last record of `kind` for that step (what the finished trajectory did)."""
    return {r["step"]: r for r in records(run) if r.get("kind") == kind}


def checkpoint_entries(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(os.listdir(root)) if root.is_dir() else []


# --------------------------------------------------------------------------- checkpoints (one place)


def step_dirs(run: Path) -> dict[int, Path]:
    """step -> directory, for every entry of run/checkpoints named like a step checkpoint."""
    out = {}
    for name in checkpoint_entries(run):
        m = STEP_DIR.match(name)
        if m and (run / "checkpoints" / name).is_dir():
            out[int(m.group(1))] = run / "checkpoints" / name
    return out


_DIGESTS: dict[tuple, str | None] = {}


def checkpoint_digest(step_dir: Path) -> str | None:
    """crc32 of the weights in one step checkpoint as the inference loader reads them (every
    trainable parameter, sorted by name, raw bytes), or None when the loader refuses it.
    Cached by the directory's file names, sizes and mtimes (a rewrite is read again)."""
    key = (str(step_dir),) + tuple(sorted((str(f.relative_to(step_dir)), f.stat().st_size, f.stat().st_mtime_ns)
                                          for f in step_dir.rglob("*") if f.is_file()))
    if key not in _DIGESTS:
        _DIGESTS[key] = _load_digest(step_dir)
    return _DIGESTS[key]


def _load_digest(step_dir: Path) -> str | None:
    from pangu_ms.errors import CheckpointError
    from pangu_ms.train.checkpoint import load_for_inference

    try:
        _, lm, _ = load_for_inference(step_dir)
    except CheckpointError:
        return None
    crc = 0
    for p in sorted(lm.trainable_params(), key=lambda p: p.name):
        crc = zlib.crc32(np.ascontiguousarray(p.asnumpy()).tobytes(), crc)
    return f"{crc:08x}"


def newest_loadable(run: Path) -> int | None:
    for step in sorted(step_dirs(run), reverse=True):
        if checkpoint_digest(step_dirs(run)[step]) is not None:
            return step
    return None


# --------------------------------------------------------------------------- row identities


def batch_row_ids(fingerprints: dict[int, int], rows: np.ndarray, per_step: int) -> dict[int, tuple[int, ...]]:
    """step -> the ids of the `per_step` rows it consumed, recovered from the logged fingerprint
    (crc32 of the step's input rows, concatenated in order) by trying every ordered choice of
    rows. `rows` [N, S+1] int32 are the shards' rows in storage order; ids index them."""
    if per_step != 2:
        raise ValueError("recovering row ids is implemented for two rows per step")
    blobs = [np.ascontiguousarray(r, dtype=np.int32).tobytes() for r in rows]
    table: dict[int, tuple[int, int]] = {}
    for i, a in enumerate(blobs):
        head = zlib.crc32(a)
        for j, b in enumerate(blobs):
            crc = zlib.crc32(b, head)
            assert crc not in table, "two row pairs share a crc32: use other toy rows"
            table[crc] = (i, j)
    missing = {s: f for s, f in fingerprints.items() if f not in table}
    assert not missing, f"fingerprints that match no pair of stored rows: {missing}"
    return {s: table[f] for s, f in fingerprints.items()}
