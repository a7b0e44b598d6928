"""`plan --dry-run-commands`: MindSpore's dry run of a layout, one rank per pipeline stage.

`msrun --sim_level=1 --sim_rank_id=R` starts a single process that believes it is rank R of
`--worker_num` ranks, compiles that rank's graphs and mocks every device call (MindSpore's
DryRun tutorial). It needs the CANN toolkit but no NPU. Level 1 adds each operator's memory;
with `GLOG_v=1` the worker log reports "Used peak memory usage (without fragments)" and
"Actual peak memory usage (with fragments)". Ranks of one stage run the same graph on their
own slices, so one rank per stage covers the layout: the first rank of each stage here.
"""
from __future__ import annotations

import shlex
from typing import Any

from pangu_ms.config import ParallelConfig
from pangu_ms.parallel.hardware import GB
from pangu_ms.parallel.layout import RankLayout

MEMORY_LINES = ("MindSpore Used memory size", "Used peak memory usage (without fragments)",
                "Actual peak memory usage (with fragments)")


def dry_run_commands(parallel: ParallelConfig, config: str, overrides: list[str], *, memory: dict[str, Any],
                     out_dir: str = "runs/dryrun") -> list[dict[str, Any]]:
    """One entry per stage: the rank, the exact command, where its log lands, what to compare."""
    layout = RankLayout(dp=parallel.dp, mp=parallel.mp, pp=parallel.pp)
    out = []
    for stage in range(parallel.pp):
        rank = layout.rank(stage, 0, 0)
        log_dir = f"{out_dir}/rank_{rank}"
        sets = [*overrides, "run.device=Ascend", "train.steps=1", f"run.output_dir={log_dir}/run"]
        argv = ["msrun", f"--worker_num={parallel.devices}", "--local_worker_num=1", "--sim_level=1",
                f"--sim_rank_id={rank}", f"--log_dir={log_dir}", "--join=True",
                "python", "-m", "pangu_ms", "pretrain", "--config", config]
        for s in sets:
            argv += ["--set", s]
        st = memory["per_stage"][stage]
        used = st["pool_total"] - st["fragmentation"] - st["framework_reserve"]
        out.append({"stage": stage, "rank": rank, "log_dir": log_dir,
                    "command": "GLOG_v=1 " + " ".join(shlex.quote(a) for a in argv),
                    "grep": "grep -hF " + " ".join(f"-e {shlex.quote(x)}" for x in MEMORY_LINES) + f" {log_dir}/worker_*.log",
                    "planner_used_gb": used / GB, "planner_with_fragments_gb": (used + st["fragmentation"]) / GB,
                    "pool_budget_gb": st["pool_budget"] / GB})
    return out


def format_dry_run(entries: list[dict[str, Any]]) -> str:
    lines = ["MindSpore dry run, one rank per pipeline stage (needs the CANN toolkit, no NPU; prepare the "
             "data first, the dry run reads one batch):"]
    for e in entries:
        lines += [f"# stage {e['stage']} (rank {e['rank']})", e["command"], e["grep"],
                  f"#   compare 'Used peak memory usage (without fragments)' with {e['planner_used_gb']:.1f} GiB and "
                  f"'Actual peak memory usage (with fragments)' with {e['planner_with_fragments_gb']:.1f} GiB "
                  f"(planner); 'MindSpore Used memory size' is the pool ({e['pool_budget_gb']:.0f} GiB assumed)"]
    lines.append("A measured peak more than ~20% off the planner's is worth a note in docs/parallel_and_launch.md "
                 "with the rank's log lines: it calibrates the planner's assumptions for that device.")
    return "\n".join(lines)
