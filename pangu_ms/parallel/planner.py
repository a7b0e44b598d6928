"""The planner behind `python -m pangu_ms plan`: a full parallel plan without compiling.

Builds the model under `mindspore.nn.utils.no_init_parameters()` (no weight memory, so a
paper-size model builds on any machine), applies the plan with `parallelize()` and reads
back strategies, stages and every parameter's full and per-device shape. Then it prices the
layout on a device (`hardware.py`): per-stage memory (`memory.py`: weights, gradients, Adam
state, weight copies, activations of the schedule's in-flight micro-batches, HCCL buffers,
framework reserve) against the device's budget, and the step time (`steptime.py`: FLOPs,
bubble, collectives) with tokens/s per device, MFU and what binds. The analytic weight table
(`params.py`) that prices the search is checked against the built model's here: a mismatch
is a planner bug and stops the command.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from pangu_ms.config import JobConfig, ParallelConfig
from pangu_ms.errors import ConfigError, PanguError
from pangu_ms.parallel.hardware import constant_table, device_spec
from pangu_ms.parallel.layout import RankLayout
from pangu_ms.parallel.memory import Step, memory_report, why_not_fit
from pangu_ms.parallel.params import opt_shard_degree, parameter_rows
from pangu_ms.parallel.plans import stage_of_layer
from pangu_ms.parallel.steptime import step_time
from pangu_ms.parallel.validate import validate


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


def parameter_table(model, chosen: dict, stages: dict[str, int], shared: dict[str, list[int]],
                    parallel: ParallelConfig) -> list[dict[str, Any]]:
    """One row per parameter of a built model: full shape, split, per-device shape, stages."""
    from pangu_ms.parallel.apply import parameter_layouts

    layouts = parameter_layouts(model, chosen)
    rows = []
    for p in model.get_parameters():
        split = tuple(layouts[p.name])
        local = tuple(n // k for n, k in zip(p.shape, split))
        held = sorted({_param_stage(p.name, stages), *shared.get(p.name, [])})
        shard = opt_shard_degree(local, split, parallel)
        rows.append({"name": p.name, "shape": list(p.shape), "split": list(split), "local_shape": list(local),
                     "stages": held, "opt_sharded": shard > 1, "opt_shard": shard})
    return rows


def check_analytic_rows(built: list[dict[str, Any]], job: JobConfig, parallel: ParallelConfig) -> None:
    """The search prices layouts from `params.parameter_rows`; it must equal the built model."""
    analytic = {r.name: r.as_dict() for r in parameter_rows(job.model, parallel)}
    got = {r["name"]: r for r in built}
    if analytic.keys() != got.keys():
        raise PanguError(f"planner weight table disagrees with the model: only in the model "
                         f"{sorted(got.keys() - analytic.keys())[:3]}, only in params.py "
                         f"{sorted(analytic.keys() - got.keys())[:3]}")
    for name, row in got.items():
        if row != analytic[name]:
            raise PanguError(f"planner weight table disagrees with the model on {name}: built {row}, "
                             f"params.py {analytic[name]}")


def job_step(job: JobConfig, parallel: ParallelConfig) -> Step:
    return Step(job.model, parallel, job.recompute.mode, job.train.global_batch_size, job.train.grad_accum_steps)


def build_report(job: JobConfig, *, devices: int | None = None, rank: int | None = None,
                 config_path: str | None = None, device: str = "910A") -> dict[str, Any]:
    """Everything `plan` prints, as a JSON-able dict (see the module docstring)."""
    import mindspore as ms
    from mindspore import nn

    from pangu_ms.kernels.switch import job_kernel_spec
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, count_parameters
    from pangu_ms.parallel.apply import parallelize
    from pangu_ms.parallel.plans import plan_for
    from pangu_ms.parallel.readback import read_back, read_stages, read_strategies

    spec = device_spec(device)
    parallel = mesh_for_devices(job.parallel, devices)
    n_dev = parallel.devices
    validate(job.model, parallel, devices=n_dev, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps)
    layout = RankLayout(dp=parallel.dp, mp=parallel.mp, pp=parallel.pp)
    if rank is not None and not 0 <= rank < n_dev:
        raise ConfigError(f"--rank {rank} is outside 0..{n_dev - 1} for {n_dev} devices")
    ms.set_device("CPU")
    kernels = job_kernel_spec(job)  # the kernels of the job's device and chip, built here without running
    with nn.utils.no_init_parameters():
        model = PanguAlphaWithLoss(job.model, kernels)
    plan = plan_for(job.model, parallel, job.recompute, kernels=kernels)
    parallelize(model, plan, parallel)
    back = read_back(model)
    chosen = {k: (None if v is None else tuple(tuple(x) for x in v)) for k, v in read_strategies(model).items()}
    rows = parameter_table(model, chosen, read_stages(model), back["shared_parameters"], parallel)
    n_params = count_parameters(job.model)
    if n_params != sum(math.prod(r["shape"]) for r in rows):
        raise PanguError("count_parameters disagrees with the built model")
    check_analytic_rows(rows, job, parallel)
    step = job_step(job, parallel)
    memory = memory_report(step, spec)
    report = _assemble(job, parallel, back, rows, n_params, config_path)
    pick = layout.coords(rank).stage if rank is not None else memory["heaviest_stage"]
    timing = step_time(step, spec)
    binds = timing.get("binds", "memory")
    if not memory["fits"]:
        binds = "memory: " + why_not_fit(memory["per_stage"][memory["heaviest_stage"]])
    report.update({"device": spec.name, "device_constants": constant_table(spec), "memory": memory,
                   "per_device_bytes": memory["per_stage"][pick], "time": timing, "binds": binds})
    if rank is not None:
        c = layout.coords(rank)
        report.update({"rank": rank, "coords": {"stage": c.stage, "dp": c.dp, "mp": c.mp},
                       "groups": layout.groups(rank)})
    return report


def _assemble(job, parallel, back, rows, n_params, config_path) -> dict[str, Any]:
    m = job.model
    return {
        "config": config_path,
        "model": {"num_layers": m.num_layers, "hidden_size": m.hidden_size, "ffn_hidden_size": m.ffn_hidden_size,
                  "num_heads": m.num_heads, "vocab_size": m.vocab_size, "seq_length": m.seq_length,
                  "compute_dtype": m.compute_dtype},
        "params": n_params,
        "devices": parallel.devices,
        "mesh": {"dp": parallel.dp, "mp": parallel.mp, "pp": parallel.pp},
        "micro_batches": parallel.micro_batches,
        "pipeline_scheduler": parallel.pipeline_scheduler,
        "pipeline_chunks": parallel.pipeline_chunks,
        "optimizer_shard": parallel.optimizer_shard,
        "vocab_emb_dp": parallel.vocab_emb_dp,
        "recompute": job.recompute.mode,
        "global_batch_size": job.train.global_batch_size,
        "grad_accum_steps": job.train.grad_accum_steps,
        "stage_of_layer": stage_of_layer(m.num_layers, parallel.pp, parallel.pipeline_chunks),
        "loss_cell": back["loss_cell"],
        "strategies": back["strategies"],
        "stages": back["stages"],
        "shared_parameters": back["shared_parameters"],
        "recompute_cells": back["recompute"],
        "comm_fusion": back["comm_fusion"],
        "parameters": rows,
    }
