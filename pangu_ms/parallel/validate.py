"""Every cross-check between a model, a parallel layout, the device count and the batch.

`validate()` runs before anything is built or compiled (the `plan` command, `init_parallel`,
the shipped-layout tests). It collects every problem and raises one `ConfigError` listing
them, each naming the numbers involved and what to change.
"""
from __future__ import annotations

import logging

from pangu_ms.config import ExpertsConfig, ModelConfig, ParallelConfig
from pangu_ms.errors import ConfigError

log = logging.getLogger(__name__)


def _mesh_problems(p: ParallelConfig, devices: int, sigma: bool = False) -> list[str]:
    out = []
    if p.devices != devices:
        hint = (f" (e.g. parallel.dp={devices // (p.mp * p.pp)})" if devices % (p.mp * p.pp) == 0
                else f" ({devices} is not divisible by mp*pp={p.mp * p.pp}: change mp or pp too)")
        out.append(f"parallel.dp*mp*pp = {p.dp}*{p.mp}*{p.pp} = {p.devices} but there are {devices} devices: "
                   f"make dp*mp*pp equal {devices}{hint}")
    if p.ep != 1 and not sigma:
        out.append(f"parallel.ep={p.ep}: expert parallelism is reserved for PanGu-Sigma; "
                   "PanGu-alpha is dense, set parallel.ep=1")
    return out


def _model_problems(m: ModelConfig, p: ParallelConfig) -> list[str]:
    out = []
    if p.mp > 1:
        checks = [("num_heads", m.num_heads, "attention and Q/K/V outputs are split over heads"),
                  ("ffn_hidden_size", m.ffn_hidden_size, "the FFN inner dimension is split")]
        if p.pp > 1 or not p.vocab_emb_dp:
            checks.append(("vocab_size", m.vocab_size, "the embedding table and logits are split over the "
                           "vocabulary (vocab_emb_dp=false or pp>1)"))
        for name, value, why in checks:
            if value % p.mp:
                out.append(f"model.{name}={value} is not divisible by parallel.mp={p.mp} ({why}): "
                           f"pick mp from {_divisors_up_to(value, 64)} or change model.{name}")
    if p.pp > 1 and p.micro_batches < p.pp:
        out.append(f"parallel.micro_batches={p.micro_batches} < parallel.pp={p.pp}: MindSpore's pipeline needs at "
                   f"least one micro-batch per stage; set parallel.micro_batches >= {p.pp}")
    if m.num_layers < p.pp:
        out.append(f"model.num_layers={m.num_layers} < parallel.pp={p.pp}: every pipeline stage needs at least "
                   f"one layer; use parallel.pp <= {m.num_layers}")
    elif p.pp > 1 and m.num_layers < p.pp * p.pipeline_chunks:
        out.append(f"model.num_layers={m.num_layers} < parallel.pp*pipeline_chunks = {p.pp}*{p.pipeline_chunks}: "
                   f"every model chunk needs at least one layer; use parallel.pipeline_chunks <= "
                   f"{max(1, m.num_layers // p.pp)}")
    if p.pp == 1 and p.pipeline_scheduler != "1f1b":
        out.append(f"parallel.pipeline_scheduler={p.pipeline_scheduler!r} needs pipeline stages (parallel.pp=1): "
                   "set parallel.pp > 1 or pipeline_scheduler=1f1b")
    return out


def _expert_problems(m: ModelConfig, ex: ExpertsConfig, p: ParallelConfig) -> list[str]:
    """PanGu-Sigma: ep carved out of dp, experts spread evenly, each ep rank within one domain."""
    out = []
    e = ex.num_experts
    try:
        ex.layer_indices(m.num_layers)
    except ValueError as exc:
        out.append(str(exc))
    if p.dp % p.ep:
        out.append(f"parallel.ep={p.ep} does not divide parallel.dp={p.dp}: expert parallelism is carved out of "
                   f"data parallelism; pick ep from {_divisors_up_to(p.dp, p.dp)}")
    if e % p.ep:
        out.append(f"experts: {e} experts per sparse layer are not divisible by parallel.ep={p.ep}: every ep "
                   f"rank holds the same number of experts; pick ep from {_divisors_up_to(e, p.dp)}")
    elif p.ep > 1:
        per_rank = e // p.ep
        bad = [f"{d.name}={d.experts}" for d in ex.domains if d.experts % per_rank]
        if bad:
            out.append(f"experts.domains {', '.join(bad)}: with ep={p.ep} each rank holds {per_rank} experts, so a "
                       f"domain's group must be a multiple of {per_rank} for its experts to fill whole ranks "
                       "(a domain is then edited or extracted rank by rank); change the group sizes or ep")
    return out


def _batch_problems(p: ParallelConfig, global_batch: int, grad_accum_steps: int) -> list[str]:
    unit = p.dp * p.micro_batches * grad_accum_steps
    if global_batch % unit == 0:
        return []
    hint = f"use a global batch that is a multiple of {unit}"
    lower = global_batch - global_batch % unit
    if lower > 0:
        hint += f" (e.g. {lower} or {lower + unit})"
    else:
        hint += f" (e.g. {unit})"
    return [f"train.global_batch_size={global_batch} is not divisible by parallel.dp*micro_batches*"
            f"train.grad_accum_steps = {p.dp}*{p.micro_batches}*{grad_accum_steps} = {unit}: {hint}"]


def _device_problems(p: ParallelConfig, device: str | None, devices: int) -> list[str]:
    if device != "CPU" or devices <= 1:
        return []
    out = []
    if p.mp > 1 or p.pp > 1:
        out.append(f"parallel.mp={p.mp}, pp={p.pp}: MindSpore runs only data parallel on CPU (semi-auto "
                   "parallel refuses the CPU backend); set mp=1 and pp=1, or run.device=Ascend")
    if p.optimizer_shard:
        out.append("parallel.optimizer_shard=true: the parallel optimizer only runs on Ascend; "
                   "set parallel.optimizer_shard=false on CPU")
    return out


def _divisors_up_to(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def validate(model: ModelConfig, parallel: ParallelConfig, *, devices: int, global_batch: int,
             grad_accum_steps: int = 1, device: str | None = None, experts: ExpertsConfig | None = None) -> None:
    """Raise `ConfigError` listing every inconsistency; return None if the layout is usable.

    Checks: dp*mp*pp == devices; ep == 1 (dense model) or, with PanGu-Sigma's `experts`, ep
    dividing dp and the experts, each domain filling whole ep ranks; heads and FFN divisible by mp, vocab
    too when it is split; num_layers >= pp; micro_batches >= pp when pipelining; global
    batch divisible by dp*micro_batches*accum; on CPU (device="CPU", more than one device) only data parallel without optimizer
    sharding. `device=None` skips the backend check (planning for another machine).
    """
    problems = (_mesh_problems(parallel, devices, experts is not None) + _model_problems(model, parallel)
                + (_expert_problems(model, experts, parallel) if experts is not None else [])
                + _batch_problems(parallel, global_batch, grad_accum_steps)
                + _device_problems(parallel, device, devices))
    if parallel.pp > 1 and parallel.vocab_emb_dp:
        log.info("pp=%d > 1: the word embedding is vocab-split (vocab_emb_dp is ignored when pipelining)",
                 parallel.pp)
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"invalid parallel layout: {problems[0]}")
        raise ConfigError("invalid parallel layout:\n" + "\n".join(f"  - {p}" for p in problems))
