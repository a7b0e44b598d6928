"""PanGu-Sigma's parallel plan report: the plan applied to the built Sigma model (no weights, no
compiling) and the per-device memory with and without the expert optimizer state on the host.

Expert parallelism is carved out of data parallelism: the dp ranks of one mp position form
dp/ep groups of ep ranks; in each group rank r holds experts [r*E/ep, (r+1)*E/ep) of every
sparse layer (split over mp on the FFN width like a dense FFN), and the dp/ep groups are the
expert's data-parallel replicas. Tokens reach their expert's rank by an all-to-all over the ep
group at dispatch and come back by another at combine (`Plan.all_to_all`).

Memory per device (bytes), from the parameter table read back from the model:
- dense weights, gradients and Adam state as `memory.py` counts them (4 + 4 + 8 per element,
  optimizer-sharded where the plan shards it), the activations and framework terms taken from
  `memory.py`'s report of the dense model of the same shape;
- expert weights 4, gradients 4 and Adam m, v 8 bytes per per-device element; with
  `experts.host_expert_state` the 8 bytes of Adam state live in host memory instead;
- the RRE layers' slot activations: per sparse layer the device's E/ep experts x C/(dp/ep)
  slots, each keeping the fp32 input (4H), its fp16 copy (2H) and about six fp32 [F/mp]
  intermediates of fc1, bias and GELU (24 F/mp). This is an estimate (not fitted: no Ascend
  measurement exists here) and sits on top of the dense FFN's activations `memory.py` already
  counts for the layer, so it errs high; under full recompute one layer's worth is held.
None of this has run on Ascend: semi-auto parallel does not compile on the CPU backend.
"""
from __future__ import annotations

import math
from typing import Any

from pangu_ms.config import JobConfig, ParallelConfig
from pangu_ms.errors import PanguError
from pangu_ms.parallel.hardware import GB, device_spec


def _is_expert(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("expert_w1", "expert_b1", "expert_w2", "expert_b2")


def slot_activation_bytes(job: JobConfig, parallel: ParallelConfig) -> float:
    """Estimated RRE slot activations per device and step (see the module docstring)."""
    m, ex = job.model, job.experts
    tokens = job.train.global_batch_size // max(1, job.train.grad_accum_steps) * m.seq_length  # one micro-step
    slots = (ex.num_experts // parallel.ep) * math.ceil(ex.capacity(tokens) / parallel.edp)
    per_slot = 6.0 * m.hidden_size + 24.0 * m.ffn_hidden_size / parallel.mp
    # with full recompute only the layer being rebuilt holds them; otherwise every sparse layer
    layers = 1 if job.recompute.mode == "full" else len(ex.layer_indices(m.num_layers))
    return layers * slots * per_slot


def sigma_plan_report(job: JobConfig, *, device: str = "910A", parallel: ParallelConfig | None = None
                      ) -> dict[str, Any]:
    """The plan of `job` (a PanGu-Sigma job) on its mesh: strategies, all-to-all points, the
    parameter table, and per-device memory without and with host-side expert state."""
    import mindspore as ms
    from mindspore import nn

    from pangu_ms.kernels.switch import job_kernel_spec
    from pangu_ms.models.pangu_sigma import PanguSigmaWithLoss, count_parameters
    from pangu_ms.parallel.apply import parallelize
    from pangu_ms.parallel.memory import memory_report
    from pangu_ms.parallel.planner import job_step, parameter_table
    from pangu_ms.parallel.plans import plan_for
    from pangu_ms.parallel.readback import read_back, read_stages, read_strategies
    from pangu_ms.parallel.validate import validate

    if job.experts is None:
        raise PanguError("sigma_plan_report: the job has no experts: section (a dense PanGu-alpha job)")
    parallel = parallel or job.parallel
    if parallel.pp != 1:
        raise PanguError(f"the Sigma plan report covers pp=1 meshes only (parallel.pp={parallel.pp})")
    validate(job.model, parallel, devices=parallel.devices, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps, experts=job.experts)
    ms.set_device("CPU")
    kernels = job_kernel_spec(job)  # the job's device and chip (Ascend: 910A or 910B), built on CPU
    with nn.utils.no_init_parameters():
        model = PanguSigmaWithLoss(job.model, job.experts, kernels)
    plan = plan_for(job.model, parallel, job.recompute, experts=job.experts, kernels=kernels)
    parallelize(model, plan, parallel)
    back = read_back(model)
    chosen = {k: (None if v is None else tuple(tuple(x) for x in v)) for k, v in read_strategies(model).items()}
    rows = parameter_table(model, chosen, read_stages(model), back["shared_parameters"], parallel)
    trainable = [r for r in rows if not r["name"].endswith(".route")]
    n_params = count_parameters(job.model, job.experts)
    if n_params != sum(math.prod(r["shape"]) for r in trainable):
        raise PanguError("pangu_sigma.count_parameters disagrees with the built model")
    dense_local = sum(math.prod(r["local_shape"]) for r in trainable if not _is_expert(r["name"]))
    dense_stored = sum(math.prod(r["local_shape"]) // r["opt_shard"] for r in trainable if not _is_expert(r["name"]))
    expert_local = sum(math.prod(r["local_shape"]) for r in trainable if _is_expert(r["name"]))
    routes = sum(4 * math.prod(r["shape"]) for r in rows if r["name"].endswith(".route"))
    spec = device_spec(device)
    base = memory_report(job_step(job, parallel), spec)["per_stage"][0]  # the dense shape's other terms
    other = {k: base[k] for k in ("weight_copies", "temporaries", "activations", "working_set", "head",
                                  "fragmentation", "framework_reserve")}
    terms = {"dense_weights": 4.0 * dense_stored, "dense_gradients": 4.0 * dense_local,
             "dense_optimizer": 8.0 * dense_stored, "expert_weights": 4.0 * expert_local,
             "expert_gradients": 4.0 * expert_local, "expert_optimizer": 8.0 * expert_local,
             "routing_tables": float(routes), "expert_slot_activations": slot_activation_bytes(job, parallel),
             **other}
    budget = spec.usable_gb.value * GB
    device_total = sum(terms.values())
    host_total = device_total - terms["expert_optimizer"]

    def verdict(total: float) -> dict[str, Any]:
        return {"pool_total": total, "pool_total_gb": total / GB, "fits": spec.peak_tflops is None or total <= budget}

    return {
        "config_family": job.family, "kernels": kernels.name, "params": n_params, "devices": parallel.devices,
        "mesh": {"dp": parallel.dp, "mp": parallel.mp, "ep": parallel.ep, "edp": parallel.edp, "pp": parallel.pp},
        "experts": {"per_layer": job.experts.num_experts, "per_device": job.experts.num_experts // parallel.ep,
                    "sparse_layers": job.experts.layer_indices(job.model.num_layers),
                    "domains": {d.name: d.experts for d in job.experts.domains},
                    "capacity_factor": job.experts.capacity_factor},
        "loss_cell": back["loss_cell"], "strategies": back["strategies"],
        "all_to_all": {k: list(v) for k, v in plan.all_to_all.items()},
        "device": spec.name, "pool_budget_gb": budget / GB,
        "per_device_elements": {"dense": dense_local, "dense_stored": dense_stored, "experts": expert_local},
        "memory_terms": terms,
        "memory": {"expert_state_on_device": verdict(device_total), "expert_state_on_host": verdict(host_total),
                   "saved_by_host_state": terms["expert_optimizer"],
                   "host_bytes_per_device": terms["expert_optimizer"]},
        "parameters": rows,
    }
