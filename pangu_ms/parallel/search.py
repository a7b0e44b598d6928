"""`plan --search`: every layout of a model on N devices, filtered, priced and ranked.

Enumerated: mp (a divisor of N up to one server), pp (a divisor of N/mp up to the layer
count), dp = N/(mp*pp); micro-batches per step (with pp > 1 the pipeline's, at least pp;
without, gradient-accumulation steps), each a divisor of the rows a replica gets; recompute
none / selective / full; optimizer sharding on / off (on only with dp > 1); the word table
replicated or vocab-split (a choice only without pipelining and with mp > 1). Each candidate
goes through `validate()` (refused: counted by the first problem's field) and the memory
model (does not fit: counted by its heaviest stage's binding term); the rest are ranked by
predicted step time. The pipeline schedule stays 1f1b.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from pangu_ms.config import ModelConfig, ParallelConfig
from pangu_ms.errors import ConfigError
from pangu_ms.parallel.hardware import GB, DeviceSpec
from pangu_ms.parallel.memory import Step, memory_report
from pangu_ms.parallel.steptime import step_time
from pangu_ms.parallel.validate import validate

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Candidate:
    step: Step
    memory: dict
    time: dict

    def summary(self) -> dict[str, Any]:
        p, mem = self.step.parallel, self.memory
        worst = mem["per_stage"][mem["heaviest_stage"]]
        return {"dp": p.dp, "mp": p.mp, "pp": p.pp, "micro_batches": self.step.micro_batches,
                "micro_batch_rows": self.step.micro_batch_rows, "recompute": self.step.recompute,
                "optimizer_shard": p.optimizer_shard, "vocab_split": self.step.vocab_parallel,
                "grad_accum": self.step.grad_accum, "heaviest_stage": worst["stage"],
                "memory_gb": worst["pool_total"] / GB, "usable_gb": worst["pool_budget"] / GB,
                "step_time_s": self.time["step_time_s"], "tokens_per_s_per_device":
                self.time["tokens_per_s_per_device"], "mfu": self.time["mfu"], "binds": self.time["binds"],
                "parts_s": self.time["parts_s"]}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def meshes(model: ModelConfig, devices: int, per_server: int) -> list[tuple[int, int, int]]:
    """(dp, mp, pp) with dp*mp*pp = devices, mp inside one server, pp <= layers."""
    out = []
    for mp in _divisors(devices):
        if mp > per_server:
            continue
        for pp in _divisors(devices // mp):
            if pp <= model.num_layers:
                out.append((devices // (mp * pp), mp, pp))
    return out


def _reason(exc: ConfigError) -> str:
    """The field a refused layout trips over first (for the counts)."""
    found = re.search(r"((?:model|parallel|train)\.[a-z_]+)", str(exc))
    return f"validate: {found.group(1) if found else 'other'}"


def candidates(model: ModelConfig, devices: int, global_batch: int, device: DeviceSpec,
               base: ParallelConfig | None = None) -> tuple[list[Candidate], dict[str, int], int]:
    """(fitting candidates, count of each reason a candidate was dropped, candidates tried)."""
    base = base or ParallelConfig()
    kept: list[Candidate] = []
    dropped: dict[str, int] = {}
    tried = 0
    for dp, mp, pp in meshes(model, devices, device.devices_per_server):
        rows = global_batch // dp if global_batch % dp == 0 else 0
        splits = [m for m in _divisors(rows) if m >= pp] if rows else [pp]
        for m in splits:
            for shard in ((False, True) if dp > 1 else (False,)):
                for vocab_dp in ((True, False) if pp == 1 and mp > 1 else (False,)):
                    par = replace(base, dp=dp, mp=mp, pp=pp, micro_batches=m if pp > 1 else 1,
                                  optimizer_shard=shard, vocab_emb_dp=vocab_dp, pipeline_scheduler="1f1b",
                                  pipeline_chunks=1)
                    accum = 1 if pp > 1 else m
                    for mode in RECOMPUTE:
                        tried += 1
                        try:
                            validate(model, par, devices=devices, global_batch=global_batch,
                                     grad_accum_steps=accum)
                        except ConfigError as exc:
                            key = _reason(exc)
                            dropped[key] = dropped.get(key, 0) + 1
                            continue
                        step = Step(model, par, mode, global_batch, accum)
                        mem = memory_report(step, device)
                        if not mem["fits"]:
                            worst = mem["per_stage"][mem["heaviest_stage"]]
                            key = ("memory: pool over usable" if worst["pool_total"] > worst["pool_budget"]
                                   else "memory: pool + HCCL buffers over device")
                            dropped[key] = dropped.get(key, 0) + 1
                            continue
                        kept.append(Candidate(step, mem, step_time(step, device)))
    # ties (equal predicted time) go to the layout with the most memory to spare
    kept.sort(key=lambda c: (round(c.time["step_time_s"], 6),
                             c.memory["per_stage"][c.memory["heaviest_stage"]]["pool_total"]))
    return kept, dict(sorted(dropped.items(), key=lambda kv: -kv[1])), tried


def _describe(c: dict) -> str:
    return (f"dp {c['dp']} x mp {c['mp']} x pp {c['pp']}, {c['micro_batches']} micro-batch(es) of "
            f"{c['micro_batch_rows']}, recompute {c['recompute']}, optimizer shard {'on' if c['optimizer_shard'] else 'off'}"
            f", table {'vocab-split' if c['vocab_split'] else 'replicated'}")


def why_first(ranked: list[dict]) -> list[str]:
    """Sentences saying why the first candidate wins, against the next ones that differ."""
    if not ranked:
        return ["no layout fits: see the drop counts"]
    best = ranked[0]
    lines = [f"fastest: {_describe(best)}: {best['step_time_s']:.3f} s per step, "
             f"{best['tokens_per_s_per_device']:.0f} tokens/s per device, MFU {best['mfu']:.1%}; "
             f"its time goes mostly to {best['binds']} ({best['parts_s'][best['binds']]:.3f} s), "
             f"memory {best['memory_gb']:.1f} of {best['usable_gb']:.0f} GiB"]
    for key in ("recompute", "mp", "pp", "optimizer_shard", "micro_batches", "vocab_split"):
        other = next((c for c in ranked[1:] if c[key] != best[key]), None)
        if other is None:
            continue
        diffs = {k: (best["parts_s"][k], other["parts_s"][k]) for k in best["parts_s"]}
        k, (a, b) = max(diffs.items(), key=lambda kv: abs(kv[1][1] - kv[1][0]))
        lines.append(f"vs {key} {other[key]} (best such: {other['step_time_s']:.3f} s, "
                     f"+{other['step_time_s'] / best['step_time_s'] - 1:.1%}): the largest difference is {k} "
                     f"{a:.3f} s -> {b:.3f} s")
    return lines


def search(model: ModelConfig, devices: int, global_batch: int, device: DeviceSpec, *, top: int = 5,
           base: ParallelConfig | None = None) -> dict[str, Any]:
    """The search's report: the top `top` layouts, drop counts and why the first wins."""
    kept, dropped, tried = candidates(model, devices, global_batch, device, base)
    ranked = [c.summary() for c in kept]
    return {"devices": devices, "device": device.name, "global_batch": global_batch, "tried": tried,
            "fit": len(kept), "dropped": dropped, "top": ranked[:top], "why": why_first(ranked)}
