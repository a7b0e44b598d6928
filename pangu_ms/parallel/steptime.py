"""Predicted time of one training step: compute, pipeline bubble and collectives.

FLOPs. Matmul weights N_mm = L (4H^2 + 2HF) + VH (the tied head). A token costs 6 N_mm for
forward and backward plus 12 L s H for the attention scores and context (Megatron's count);
that is the model FLOPs MFU divides by. Full recompute runs every layer's forward twice (the
layers' 6 -> 8, x4/3), selective recompute the attention core's (+4 L s H); that is hardware
FLOPs. A stage's FLOPs per micro-batch are its layers' (divided by mp) plus the head on the
last stage (divided by mp when the table is vocab-split, else computed on every mp rank).

Time. A micro-batch on a stage takes FLOPs / (peak x efficiency), plus its model-parallel
all-reduces (2 per layer forward, 2 backward, 2 more when full recompute replays the forward;
fp16 [T, H] messages) and its pipeline sends (fp32 [T, H] forward and back), neither
overlapped. The pipeline runs m micro-batches at the pace of its slowest stage and idles for
the bubble (pp - 1) / (m v) of that. The data-parallel gradient reduction (fp32; with
optimizer sharding a reduce-scatter of the gradients and an all-gather of the fp16 weights)
overlaps the last micro-batch's backward (the all-gather the first one's forward) except its
last fusion group; the tied table's gradient is all-reduced between the first and last stage.

Collectives, n ranks, M bytes, link bandwidth B x link efficiency, alpha per algorithm step:
ring all-reduce 2 (n-1)/n M / B + 2 (n-1) alpha; full-mesh all-reduce (every pair linked,
all links busy at once) 2 M / (n B) + 2 alpha. A group is priced level by level from where
its ranks sit (rank = stage*dp*mp + dp_index*mp + mp_index): inside an HCCS group (mesh),
across the HCCS groups of a server (910A: PCIe, ring) and across servers (RoCE, ring), each
level reducing the message the level below left (hierarchical reduce-scatter / all-gather).
"""
from __future__ import annotations

import math

from pangu_ms.parallel import activations as act
from pangu_ms.parallel.hardware import DeviceSpec
from pangu_ms.parallel.memory import Step, layers_on
from pangu_ms.parallel.params import stage_params, vocab_split


def matmul_params(step: Step) -> int:
    m = step.model
    return m.num_layers * (4 * m.hidden_size ** 2 + 2 * m.hidden_size * m.ffn_hidden_size) + m.vocab_size * m.hidden_size


def layer_flops_per_token(step: Step, *, hardware: bool) -> float:
    """Forward + backward FLOPs of one layer for one token (with recompute if `hardware`)."""
    m = step.model
    weights = 4 * m.hidden_size ** 2 + 2 * m.hidden_size * m.ffn_hidden_size
    matmul, attention = 6.0 * weights, 12.0 * m.seq_length * m.hidden_size
    if hardware and step.recompute == "full":
        return (matmul + attention) * 4 / 3
    if hardware and step.recompute == "selective":
        return matmul + attention * 4 / 3
    return matmul + attention


def model_flops_per_step(step: Step) -> float:
    m = step.model
    tokens = step.global_batch * m.seq_length
    return tokens * (m.num_layers * layer_flops_per_token(step, hardware=False) + 6.0 * m.vocab_size * m.hidden_size)


def ring_allreduce(nbytes: float, n: int, bw: float, alpha: float) -> float:
    """Seconds for a ring all-reduce of `nbytes` over `n` ranks at `bw` bytes/s per link."""
    return 0.0 if n <= 1 else 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * alpha


def mesh_allreduce(nbytes: float, n: int, bw: float, alpha: float) -> float:
    """Seconds for a full-mesh all-reduce (reduce-scatter then all-gather over all n-1 links)."""
    return 0.0 if n <= 1 else 2 * nbytes / (n * bw) + 2 * alpha


def group_levels(device: DeviceSpec, n: int, stride: int) -> tuple[int, int, int]:
    """How `n` ranks spaced `stride` apart sit: (per HCCS group, groups per server, servers)."""
    per_server = max(1, min(n, device.devices_per_server // stride)) if stride < device.devices_per_server else 1
    per_group = max(1, min(per_server, device.hccs_group // stride)) if stride < device.hccs_group else 1
    return per_group, per_server // per_group, math.ceil(n / per_server)


def allreduce_time(device: DeviceSpec, nbytes: float, n: int, stride: int, *, fraction: float = 1.0) -> float:
    """Seconds for an all-reduce of `nbytes` over a group of `n` ranks spaced `stride` apart.

    `fraction` 0.5 prices a reduce-scatter or an all-gather alone (half the traffic)."""
    if n <= 1:
        return 0.0
    eff, alpha = device.link_efficiency.value, device.latency_us.value * 1e-6
    g, k, servers = group_levels(device, n, stride)
    t = mesh_allreduce(nbytes, g, device.hccs_link_gbs.value * 1e9 * eff, alpha)
    if k > 1:
        bw = (device.cross_group_gbs or device.hccs_link_gbs).value * 1e9 * eff
        t += ring_allreduce(nbytes / g, k, bw, alpha)
    if servers > 1:
        t += ring_allreduce(nbytes / (g * k), servers, device.roce_gbs.value * 1e9 * eff, alpha)
    return t * fraction


def p2p_time(device: DeviceSpec, nbytes: float, ranks_per_stage: int) -> float:
    """One send between neighbouring stages: over RoCE when a stage fills whole servers."""
    eff, alpha = device.link_efficiency.value, device.latency_us.value * 1e-6
    link = device.roce_gbs if ranks_per_stage >= device.devices_per_server else device.hccs_link_gbs
    return nbytes / (link.value * 1e9 * eff) + alpha


def _stage_micro_batch(step: Step, device: DeviceSpec, stage: int) -> dict[str, float]:
    m, p = step.model, step.parallel
    tokens = step.micro_batch_rows * m.seq_length
    n_layers, _ = layers_on(step, stage)
    flops = n_layers * layer_flops_per_token(step, hardware=True) * tokens / p.mp
    if stage == p.pp - 1:
        flops += 6.0 * m.vocab_size * m.hidden_size * tokens / (p.mp if vocab_split(p) else 1)
    compute = flops / (device.peak_tflops.value * 1e12 * device.efficiency.value)
    per_layer_ar = 6 if step.recompute == "full" else 4
    n_ar = n_layers * per_layer_ar + (1 if stage == 0 and vocab_split(p) else 0) + (1 if stage == p.pp - 1 else 0)
    mp_comm = n_ar * allreduce_time(device, 2.0 * tokens * m.hidden_size, p.mp, 1)
    p2p = 0.0
    if p.pp > 1:
        # sends on the critical path: the forward output to the next stage, the input gradient to the previous
        sends = (stage < p.pp - 1) + (stage > 0)
        p2p = sends * p2p_time(device, 4.0 * tokens * m.hidden_size, p.dp * p.mp)
    return {"compute": compute, "mp_comm": mp_comm, "p2p": p2p, "flops": flops}


def step_time(step: Step, device: DeviceSpec) -> dict:
    """The predicted step: its parts (seconds), tokens/s per device, MFU and what binds."""
    if device.peak_tflops is None:
        return {}
    m, p = step.model, step.parallel
    per_stage = [_stage_micro_batch(step, device, s) for s in range(p.pp)]
    beat = max(per_stage, key=lambda s: s["compute"] + s["mp_comm"] + s["p2p"])
    mb_time = beat["compute"] + beat["mp_comm"] + beat["p2p"]
    mbs = step.micro_batches
    busy = mbs * mb_time
    bubble = act.bubble_fraction(p.pipeline_scheduler, p.pp, mbs, p.pipeline_chunks) * busy
    local = max(sp.local for sp in stage_params(m, p))  # the stage whose gradient reduction takes longest
    groups = max(1, math.ceil((m.num_layers - 1) / max(p.grad_agg_layers, 1)) + 1)
    backward_window = mb_time * 2 / 3  # a micro-batch's backward: about 2/3 of its FLOPs
    if p.optimizer_shard:
        reduce = allreduce_time(device, 4.0 * local, p.dp, p.mp, fraction=0.5)  # reduce-scatter, fp32 grads
        gather = allreduce_time(device, 2.0 * local, p.dp, p.mp, fraction=0.5)  # all-gather, fp16 weights
    else:
        reduce, gather = allreduce_time(device, 4.0 * local, p.dp, p.mp), 0.0
    dp_exposed = max(reduce - backward_window, reduce / groups) if reduce else 0.0
    gather_exposed = max(gather - mb_time / 3, gather / groups) if gather else 0.0
    tied = 0.0
    if p.pp > 1:
        table = 4.0 * m.vocab_size * m.hidden_size / (p.mp if vocab_split(p) else 1)
        tied = allreduce_time(device, table, 2, p.dp * p.mp * (p.pp - 1))
    total = busy + bubble + dp_exposed + gather_exposed + tied
    tokens = step.global_batch * m.seq_length
    peak = device.peak_tflops.value * 1e12
    parts = {"compute": mbs * beat["compute"], "pipeline_bubble": bubble, "mp_comm": mbs * beat["mp_comm"],
             "pp_p2p": mbs * beat["p2p"], "dp_comm_exposed": dp_exposed + gather_exposed, "tied_table_sync": tied}
    model_flops = model_flops_per_step(step)
    return {"step_time_s": total, "parts_s": parts, "binds": max(parts, key=parts.get),
            "tokens_per_s_per_device": tokens / total / p.devices,
            "mfu": model_flops / (total * p.devices * peak),
            "model_tflops_per_step": model_flops / 1e12,
            "dp_comm_s": {"reduce": reduce, "gather": gather, "overlap_window": backward_window},
            "slowest_stage": per_stage.index(beat), "micro_batch_s": mb_time}
