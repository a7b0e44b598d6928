"""The planner behind `python -m pangu_ms plan`: a full parallel plan without compiling.

Builds the model under `mindspore.nn.utils.no_init_parameters()` (no weight memory, so a
paper-size model builds on any machine), applies the plan with `parallelize()` and
reads everything back: strategies, stages, per-parameter full and per-device shapes and
per-device memory. Memory model (per device, bytes): fp32 master weights (4/param), fp32
gradients (4/param), Adam moments m and v (8/param). With optimizer sharding (MindSpore's
parallel optimizer, level 1) the fp32 weights and Adam state of each parameter slice are
split over the data-parallel group when the slice's first dimension divides by dp and the
slice is at least 64 KB (the framework's default threshold); gradients stay whole.
Activations are not counted (they depend on micro-batch size and recompute).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from pangu_ms.config import JobConfig, ParallelConfig
from pangu_ms.errors import ConfigError
from pangu_ms.parallel.layout import RankLayout
from pangu_ms.parallel.plans import stage_of_layer
from pangu_ms.parallel.validate import validate

OPT_SHARD_THRESHOLD_BYTES = 64 * 1024


def mesh_for_devices(parallel: ParallelConfig, devices: int | None) -> ParallelConfig:
    """The config's mesh, or the same mp and pp with dp scaled to `devices`."""
    if devices is None or devices == parallel.devices:
        return parallel
    if devices % (parallel.mp * parallel.pp):
        raise ConfigError(f"--devices {devices} is not divisible by parallel.mp*pp = {parallel.mp}*{parallel.pp} = "
                          f"{parallel.mp * parallel.pp}: pick a multiple of {parallel.mp * parallel.pp} or change "
                          "mp/pp with --set")
    return replace(parallel, dp=devices // (parallel.mp * parallel.pp))


def _param_stage(name: str, stages: dict[str, int]) -> int:
    """Stage of the nearest enclosing cell with a stage (0 without pipelining)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        key = ".".join(parts[:i])
        if key in stages:
            return stages[key]
    return 0


def _opt_sharded(local: tuple[int, ...], dp: int) -> bool:
    return dp > 1 and len(local) > 0 and local[0] % dp == 0 and math.prod(local) * 4 >= OPT_SHARD_THRESHOLD_BYTES


def parameter_table(model, chosen: dict, stages: dict[str, int], shared: dict[str, list[int]],
                    parallel: ParallelConfig) -> list[dict[str, Any]]:
    """One row per parameter: full shape, split, per-device shape, stages holding it."""
    from pangu_ms.parallel.apply import parameter_layouts

    layouts = parameter_layouts(model, chosen)
    rows = []
    for p in model.get_parameters():
        split = layouts[p.name]
        local = tuple(n // k for n, k in zip(p.shape, split))
        held = sorted({_param_stage(p.name, stages), *shared.get(p.name, [])})
        rows.append({"name": p.name, "shape": list(p.shape), "split": list(split), "local_shape": list(local),
                     "stages": held, "opt_sharded": _opt_sharded(local, parallel.dp)})
    return rows


def memory_per_stage(rows: list[dict[str, Any]], parallel: ParallelConfig) -> list[dict[str, int]]:
    """Per-device bytes on each stage: weights, gradients, optimizer, with and without sharding."""
    out = []
    for stage in range(parallel.pp):
        w = g = o = w_sh = o_sh = 0
        for r in rows:
            if stage not in r["stages"]:
                continue
            n = math.prod(r["local_shape"])
            div = parallel.dp if r["opt_sharded"] else 1
            w, g, o = w + 4 * n, g + 4 * n, o + 8 * n
            w_sh, o_sh = w_sh + 4 * n // div, o_sh + 8 * n // div
        out.append({"stage": stage, "weights": w, "gradients": g, "optimizer": o,
                    "weights_sharded": w_sh, "optimizer_sharded": o_sh})
    return out


def build_report(job: JobConfig, *, devices: int | None = None, rank: int | None = None,
                 config_path: str | None = None) -> dict[str, Any]:
    """Everything `plan` prints, as a JSON-able dict (see the module docstring)."""
    import mindspore as ms
    from mindspore import nn

    from pangu_ms.kernels.switch import job_kernel_spec
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, count_parameters
    from pangu_ms.parallel.apply import parallelize
    from pangu_ms.parallel.plans import plan_for
    from pangu_ms.parallel.readback import read_back, read_stages, read_strategies

    parallel = mesh_for_devices(job.parallel, devices)
    n_dev = parallel.devices
    validate(job.model, parallel, devices=n_dev, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps)
    layout = RankLayout(dp=parallel.dp, mp=parallel.mp, pp=parallel.pp)
    if rank is not None and not 0 <= rank < n_dev:
        raise ConfigError(f"--rank {rank} is outside 0..{n_dev - 1} for {n_dev} devices")
    ms.set_device("CPU")
    spec = job_kernel_spec(job)  # the kernels of the job's device and chip, built here without running
    with nn.utils.no_init_parameters():
        model = PanguAlphaWithLoss(job.model, spec)
    plan = plan_for(job.model, parallel, job.recompute, kernels=spec)
    parallelize(model, plan, parallel)
    back = read_back(model)
    chosen = {k: (None if v is None else tuple(tuple(x) for x in v)) for k, v in read_strategies(model).items()}
    rows = parameter_table(model, chosen, read_stages(model), back["shared_parameters"], parallel)
    n_params = count_parameters(job.model)
    assert n_params == sum(math.prod(r["shape"]) for r in rows), "count_parameters disagrees with the model"
    mem = memory_per_stage(rows, parallel)
    return _assemble(job, parallel, layout, back, rows, mem, n_params, rank, config_path)


def _assemble(job, parallel, layout, back, rows, mem, n_params, rank, config_path) -> dict[str, Any]:
    heaviest = max(mem, key=lambda m: m["weights"] + m["gradients"] + m["optimizer"])
    pick = mem[layout.coords(rank).stage] if rank is not None else heaviest
    sharded = parallel.optimizer_shard
    per_device = {"stage": pick["stage"],
                  "weights": pick["weights_sharded"] if sharded else pick["weights"],
                  "gradients": pick["gradients"],
                  "optimizer": pick["optimizer_sharded"] if sharded else pick["optimizer"]}
    per_device["total"] = per_device["weights"] + per_device["gradients"] + per_device["optimizer"]
    m = job.model
    report: dict[str, Any] = {
        "config": config_path,
        "model": {"num_layers": m.num_layers, "hidden_size": m.hidden_size, "ffn_hidden_size": m.ffn_hidden_size,
                  "num_heads": m.num_heads, "vocab_size": m.vocab_size, "seq_length": m.seq_length},
        "params": n_params,
        "devices": parallel.devices,
        "mesh": {"dp": parallel.dp, "mp": parallel.mp, "pp": parallel.pp},
        "micro_batches": parallel.micro_batches,
        "optimizer_shard": sharded,
        "vocab_emb_dp": parallel.vocab_emb_dp,
        "recompute": job.recompute.mode,
        "global_batch_size": job.train.global_batch_size,
        "stage_of_layer": stage_of_layer(m.num_layers, parallel.pp),
        "loss_cell": back["loss_cell"],
        "strategies": back["strategies"],
        "stages": back["stages"],
        "shared_parameters": back["shared_parameters"],
        "recompute_cells": back["recompute"],
        "comm_fusion": back["comm_fusion"],
        "parameters": rows,
        "per_device_bytes": per_device,
        "per_stage_bytes": mem,
    }
    if rank is not None:
        c = layout.coords(rank)
        report["rank"] = rank
        report["coords"] = {"stage": c.stage, "dp": c.dp, "mp": c.mp}
        report["groups"] = layout.groups(rank)
    return report
