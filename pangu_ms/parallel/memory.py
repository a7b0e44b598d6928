"""Per-device memory of a training step, stage by stage, against the device's budget.

For each pipeline stage (bytes per device; `params.py` gives the weight table):
- weights: fp32 master weights, 4 bytes per stored element (a 1/k slice when optimizer-sharded);
- gradients: one fp32 gradient per per-device element, 4 bytes (MindSpore's level-1 parallel
  optimizer shards weights and Adam state, not gradients; on Ascend this is the micro-batch
  accumulation buffer of `PipelineGradReducer`);
- optimizer: Adam m and v, 8 bytes per stored element;
- weight copies: with float16 compute each matmul reads a cast copy (2 bytes). Assumed kept for
  the backward pass for every layer of the stage when optimizer sharding is on (the forward
  all-gather sits outside the recomputed cells, as MindSpore's level 3, which re-gathers
  before the backward, exists to avoid) or when layers are not fully recomputed; with full
  recompute and no sharding only the layer being rebuilt holds one;
- activations: in-flight micro-batches of the schedule x the stage's layers (`activations.py`),
  plus the one-layer working set of recompute and, on the last stage, the head and loss;
- framework reserve and fragmentation (inside MindSpore's pool);
- HCCL buffers: 2 x HCCL_BUFFSIZE per communicator the rank belongs to, outside the pool.
A stage fits when its pool total is at most the device's usable memory (`usable_gb`) and the
pool plus HCCL buffers at most its memory (`memory_gb`).

On the CPU device the activations come from coefficients measured by bench/planner_memory.py
(MindSpore's CPU backend keeps every intermediate of the step's graph, more than the backward
needs, so the derived Ascend terms do not apply there); they describe one kernel path, the
device's `measured_kernels`, and a model that builds another there is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

from pangu_ms.config import ModelConfig, ParallelConfig
from pangu_ms.errors import ConfigError
from pangu_ms.parallel import activations as act
from pangu_ms.parallel.hardware import GB, DeviceSpec
from pangu_ms.parallel.params import StageParams, layer_local_numel, stage_params, vocab_split
from pangu_ms.parallel.plans import stage_of_layer

MB = 2**20


@dataclass(frozen=True)
class Step:
    """The shape of one training step: what memory and time both depend on."""

    model: ModelConfig
    parallel: ParallelConfig
    recompute: str
    """none, selective or full."""
    global_batch: int
    """rows per optimizer step, all data-parallel replicas together."""
    grad_accum: int = 1
    """accumulation steps (the micro-batches of a step when there is no pipeline)."""

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step and replica: the pipeline's, else the accumulation steps."""
        return self.parallel.micro_batches if self.parallel.pp > 1 else self.grad_accum

    @property
    def micro_batch_rows(self) -> int:
        """Rows per micro-batch per data-parallel replica."""
        unit = self.parallel.dp * self.micro_batches
        if self.global_batch % unit:
            raise ConfigError(f"global batch {self.global_batch} does not split into dp {self.parallel.dp} x "
                              f"{self.micro_batches} micro-batches")
        return self.global_batch // unit

    @property
    def vocab_parallel(self) -> bool:
        return vocab_split(self.parallel) and self.parallel.mp > 1


def communicators(parallel: ParallelConfig, stage: int, held: StageParams) -> int:
    """HCCL communicators one rank of `stage` belongs to: world, mp, dp, the replicated-weight
    optimizer-sharding group (dp*mp), pipeline neighbours and the tied-table pair (first/last)."""
    p = parallel
    n = 1 + (p.mp > 1) + (p.dp > 1)
    if p.mp > 1 and held.max_shard > p.dp:
        n += 1
    if p.pp > 1:
        n += 1 if stage in (0, p.pp - 1) else 2
        n += 1 if stage in (0, p.pp - 1) else 0
    return n


def layers_on(step: Step, stage: int) -> tuple[int, bool]:
    """(layers on `stage`, whether the query layer is among them)."""
    p, L = step.parallel, step.model.num_layers
    st = stage_of_layer(L, p.pp, p.pipeline_chunks)
    return sum(1 for s in st if s == stage), st[-1] == stage


def _activations(step: Step, stage: int, device: DeviceSpec) -> dict[str, float]:
    m, p, mode = step.model, step.parallel, step.recompute
    b, mp = step.micro_batch_rows, p.mp
    n_layers, has_query = layers_on(step, stage)
    first, last = stage == 0, stage == p.pp - 1
    if device.activation_coeffs:  # measured (CPU): bytes per T*H element and layer, per T*V element
        ran = act.kernel_backend(m, device.name)
        if ran != device.measured_kernels:
            raise ConfigError(f"the {device.name} memory constants were measured with the {device.measured_kernels} "
                              f"kernels; this model builds {ran} there (model.kernels={m.kernels!r}, dropout "
                              f"{m.dropout}, {m.compute_dtype}): its saved tensors differ, so it cannot be priced")
        tokens = b * m.seq_length
        per_layer = device.activation_coeffs[mode]["TH"] * tokens * m.hidden_size
        head = device.activation_coeffs["head"]["TV"] * tokens * m.vocab_size
        return {"activations": n_layers * per_layer, "working_set": 0.0, "head": head if last else 0.0}
    kernels = act.kernel_backend(m, device.name)
    per_mb = sum(act.layer_bytes(m, b, mp, mode, query_layer=has_query and i == n_layers - 1, backend=kernels)
                 for i in range(n_layers))
    per_mb += act.extras_bytes(m, b, mp, first=first, last=last, vocab_parallel=step.vocab_parallel, mode=mode,
                               backend=kernels)
    flight = act.in_flight(p.pipeline_scheduler, p.pp, stage, step.micro_batches, p.pipeline_chunks)
    return {"activations": flight * per_mb, "working_set": act.working_set(m, b, mp, mode, backend=kernels),
            "head": act.head_bytes(m, b, mp, vocab_parallel=step.vocab_parallel) if last else 0.0,
            "in_flight": flight}


def _weight_copies(step: Step, stage: int, local: int) -> float:
    m, p = step.model, step.parallel
    if m.compute_dtype == "float32":
        return 0.0
    if p.optimizer_shard or step.recompute != "full":
        return 2.0 * local
    layer = layer_local_numel(m, p.mp)
    table = m.vocab_size * m.hidden_size // (p.mp if vocab_split(p) else 1)
    return 2.0 * (layer + (table if stage == p.pp - 1 else 0))


def stage_memory(step: Step, device: DeviceSpec, stage: int) -> dict:
    """The memory breakdown of one device of `stage` (bytes), with the verdict."""
    held = stage_params(step.model, step.parallel)[stage]
    local, stored = held.local, held.stored
    out: dict = {"stage": stage, "weights": 4.0 * stored, "gradients": 4.0 * local, "optimizer": 8.0 * stored,
                 "weight_copies": _weight_copies(step, stage, local), "temporaries": 0.0}
    if device.activation_coeffs:  # CPU, measured: the step's extra per-parameter tensors and per-layer graph state
        states = device.activation_coeffs["states"]
        out["temporaries"] = (states["sigma"] - 16.0) * local + states["layer"] * layers_on(step, stage)[0]
    a = _activations(step, stage, device)
    out.update(a)
    dynamic = out["weight_copies"] + a["activations"] + a["working_set"] + a["head"]
    out["fragmentation"] = device.fragmentation.value * dynamic
    out["framework_reserve"] = device.framework_reserve_gb.value * GB
    keys = ("weights", "gradients", "optimizer", "weight_copies", "temporaries", "activations", "working_set",
            "head", "fragmentation", "framework_reserve")
    out["pool_total"] = sum(out[k] for k in keys)
    n_comm = communicators(step.parallel, stage, held) if device.peak_tflops is not None else 0
    out["communicators"] = n_comm
    out["hccl_buffers"] = n_comm * 2 * device.hccl_buffer_mb.value * MB
    out["device_total"] = out["pool_total"] + out["hccl_buffers"]
    out["pool_budget"] = device.usable_gb.value * GB
    out["device_budget"] = device.memory_gb.value * GB
    if device.peak_tflops is None:  # CPU: no budget, only the prediction
        out["fits"] = True
    else:
        out["fits"] = out["pool_total"] <= out["pool_budget"] and out["device_total"] <= out["device_budget"]
    return out


def memory_report(step: Step, device: DeviceSpec) -> dict:
    """Every stage's breakdown, the heaviest stage and whether the layout fits."""
    stages = [stage_memory(step, device, s) for s in range(step.parallel.pp)]
    worst = max(stages, key=lambda s: max(s["pool_total"] / max(s["pool_budget"], 1),
                                          s["device_total"] / max(s["device_budget"], 1)))
    return {"per_stage": stages, "heaviest_stage": worst["stage"], "fits": all(s["fits"] for s in stages),
            "micro_batch_rows": step.micro_batch_rows, "micro_batches": step.micro_batches}


def why_not_fit(stage: dict) -> str:
    """One line naming the biggest terms of a stage that does not fit."""
    big = sorted(((stage[k], k) for k in ("activations", "gradients", "weights", "optimizer", "weight_copies",
                                           "head", "working_set")), reverse=True)[:3]
    terms = ", ".join(f"{k} {v / GB:.1f} GiB" for v, k in big)
    if stage["pool_total"] > stage["pool_budget"]:
        return (f"stage {stage['stage']}: {stage['pool_total'] / GB:.1f} GiB in MindSpore's pool > "
                f"{stage['pool_budget'] / GB:.0f} GiB usable ({terms})")
    return (f"stage {stage['stage']}: pool {stage['pool_total'] / GB:.1f} GiB + HCCL buffers "
            f"{stage['hccl_buffers'] / GB:.1f} GiB > {stage['device_budget'] / GB:.0f} GiB on the device")

