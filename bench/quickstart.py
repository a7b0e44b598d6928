#!/usr/bin/env python
"""The README quickstart's `pretrain`, this checkout against another one (the code before
issue 15: a worktree of 9a3b2f9), side by side.

Each checkout runs in its own scratch folder with its own `prepare` (once, untimed), then the
two `pretrain` runs alternate for `--rounds` rounds, each a fresh process of the command the
README gives (`python -m pangu_ms pretrain --config ascend_configs/runs/pangu_alpha_tiny_cpu.yaml`,
compile, held-out evaluation and checkpoints included), with `PYTHONPATH` pointing at that
checkout so the same interpreter imports its code. Prints JSON lines:

    {"metric": "pretrain_s", "side": "this" | "base", "value": wall seconds, "tokens_per_s": ..., "round": r}
    {"metric": "median_pretrain_s", "side": ..., "value": ..., "runs": [...]}
    {"metric": "speedup", "value": base median / this median, "final_loss": {"this": .., "base": ..}}

    git worktree add /tmp/pangu_base 9a3b2f9
    python bench/quickstart.py --base /tmp/pangu_base                 # 600 steps, 2 rounds (~20 min on 2 cores)
    python bench/quickstart.py --base /tmp/pangu_base --steps 50 --rounds 1   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "ascend_configs/runs/pangu_alpha_tiny_cpu.yaml"


def _run(checkout: Path, workdir: Path, args: list[str], timeout: float) -> float:
    """Run `python -m pangu_ms ARGS` on `checkout`'s code in `workdir`; wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pangu_ms", *args], cwd=workdir, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench/quickstart.py: `{' '.join(args[:1])}` failed in {checkout} "
                 f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="checkout to compare with (e.g. a worktree of 9a3b2f9)")
    p.add_argument("--steps", type=int, default=600, help="pretrain steps (the quickstart's 600 by default)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args()
    base = Path(a.base).resolve()
    if not (base / "pangu_ms" / "__main__.py").is_file():
        sys.exit(f"bench/quickstart.py: --base {base} holds no pangu_ms package; "
                 f"make one with `git worktree add {base} 9a3b2f9`")
    scratch = Path(a.workdir or tempfile.mkdtemp(prefix="pangu_quickstart_")).resolve()
    sides = {"this": ROOT, "base": base}
    for side, checkout in sides.items():
        work = scratch / side
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "runs" / "tiny" / "data").is_dir():
            _run(checkout, work, ["prepare", "--config", str(checkout / CONFIG), "--no-progress"], a.timeout)
    walls: dict[str, list[float]] = {s: [] for s in sides}
    losses: dict[str, float] = {}
    for r in range(a.rounds):
        for side, checkout in sides.items():
            work, out = scratch / side, scratch / side / f"pretrain_r{r}"
            wall = _run(checkout, work, ["pretrain", "--config", str(checkout / CONFIG), "--no-progress",
                                         "--set", f"train.steps={a.steps}", "--out", str(out)], a.timeout)
            summary = json.loads((out / "summary.json").read_text())
            walls[side].append(wall)
            losses[side] = summary.get("final_train_loss", summary.get("train_loss"))
            print(json.dumps({"metric": "pretrain_s", "side": side, "value": round(wall, 2), "steps": a.steps,
                              "tokens_per_s": summary.get("tokens_per_s"), "round": r}), flush=True)
    med = {s: statistics.median(v) for s, v in walls.items()}
    for side, v in walls.items():
        print(json.dumps({"metric": "median_pretrain_s", "side": side, "value": round(med[side], 2),
                          "runs": [round(x, 2) for x in v]}))
    print(json.dumps({"metric": "speedup", "value": round(med["base"] / med["this"], 3), "final_loss": losses,
                      "workdir": str(scratch)}))


if __name__ == "__main__":
    main()
