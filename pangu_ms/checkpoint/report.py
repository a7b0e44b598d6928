"""`checkpoint inspect`: layout, steps, completeness, per-rank sizes and what is missing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pangu_ms.checkpoint import store
from pangu_ms.errors import CheckpointError


def inspect_checkpoints(path: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """Every step under `path` (a run dir, its checkpoints/ or one step dir), as JSON-able data.

    `verify` also checks every file's sha256 (reads every byte); without it sizes are checked.
    """
    dirs = store.list_step_dirs(path)
    if not dirs:
        raise CheckpointError(f"{path}: no checkpoints (expected checkpoints/step_XXXXXXXX/ directories)")
    steps = []
    for d in dirs:
        status = store.check_step(d, verify_ranks=[-1] if verify else None)
        entry: dict[str, Any] = {"step": status.step, "path": str(d), "complete": status.complete,
                                 "problems": status.problems, "legacy": status.legacy,
                                 "rank_bytes": {str(r): b for r, b in sorted(status.rank_bytes.items())}}
        if (d / store.LAYOUT).is_file():
            layout = store.read_layout(d)
            entry["mesh"] = layout.mesh()
            entry["world_size"] = layout.world_size
            entry["tensors"] = len(layout.tensors)
            entry["sliced_tensors"] = sum(1 for t in layout.tensors.values() if t.local_shape != t.shape)
            entry["full_bytes"] = sum(t.nbytes for t in layout.tensors.values())
            entry["missing_ranks"] = [r for r in range(layout.world_size) if r not in status.rank_bytes]
        if (d / store.META).is_file():
            meta = store.read_json(d / store.META)
            entry["meta"] = {k: meta[k] for k in ("step", "data_step", "tokens_seen", "loss", "format",
                                                  "converted_from") if k in meta}
        steps.append(entry)
    complete = [s["step"] for s in steps if s["complete"]]
    return {"path": str(path), "steps": steps, "newest_complete": complete[0] if complete else None,
            "verified_checksums": verify}


def format_report(r: dict[str, Any]) -> str:
    lines = [f"checkpoints under {r['path']}: newest complete step "
             f"{r['newest_complete'] if r['newest_complete'] is not None else 'none'}"
             + (" (checksums verified)" if r["verified_checksums"] else " (sizes checked; --verify reads checksums)")]
    for s in r["steps"]:
        mesh = s.get("mesh")
        where = (f"dp {mesh['dp']} x mp {mesh['mp']} x pp {mesh['pp']}"
                 f"{', optimizer shard' if mesh['optimizer_shard'] else ''} = {s['world_size']} ranks") if mesh else \
            ("one-file checkpoint" if s["legacy"] else "no layout.json")
        lines.append(f"step {s['step']:>8}  {'complete' if s['complete'] else 'INCOMPLETE'}  {where}")
        if "tensors" in s:
            lines.append(f"          {s['tensors']} tensors ({s['sliced_tensors']} sliced), "
                         f"{_size(s['full_bytes'])} unsliced")
        if s.get("meta"):
            lines.append("          " + ", ".join(f"{k} {v}" for k, v in s["meta"].items()))
        sizes = s["rank_bytes"]
        if sizes:
            shown = list(sizes.items())
            text = ", ".join(f"{r}: {_size(b)}" for r, b in shown[:8]) + (" ..." if len(shown) > 8 else "")
            lines.append(f"          per rank: {text}; total {_size(sum(sizes.values()))}")
        if s.get("missing_ranks"):
            lines.append(f"          missing ranks: {s['missing_ranks']}")
        for p in s["problems"][:10]:
            lines.append(f"          - {p}")
        if len(s["problems"]) > 10:
            lines.append(f"          - ... {len(s['problems']) - 10} more")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
