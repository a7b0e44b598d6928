"""Every cross-check between a model, a parallel layout, the device count and the batch.

`validate()` runs before anything is built or compiled (the `plan` command, `init_parallel`,
the shipped-layout tests). It collects every problem and raises one `ConfigError` listing
them, each naming the numbers involved and what to change.
"""
from __future__ import annotations

import logging

from pangu_ms.config import ModelConfig, ParallelConfig
from pangu_ms.errors import ConfigError

log = logging.getLogger(__name__)


def _mesh_problems(p: ParallelConfig, devices: int) -> list[str]:
    out = []
    if p.devices != devices:
        hint = (f" (e.g. parallel.dp={devices // (p.mp * p.pp)})" if devices % (p.mp * p.pp) == 0
                else f" ({devices} is not divisible by mp*pp={p.mp * p.pp}: change mp or pp too)")
        out.append(f"parallel.dp*mp*pp = {p.dp}*{p.mp}*{p.pp} = {p.devices} but there are {devices} devices: "
                   f"make dp*mp*pp equal {devices}{hint}")
    if p.ep != 1:
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
             grad_accum_steps: int = 1, device: str | None = None) -> None:
    """Raise `ConfigError` listing every inconsistency; return None if the layout is usable.

    Checks: dp*mp*pp == devices; ep == 1 (dense model); heads and FFN divisible by mp, vocab
    too when it is split; num_layers >= pp; micro_batches >= pp when pipelining; global
    batch divisible by dp*micro_batches*accum; on CPU (device="CPU", more than one device) only data parallel without optimizer
    sharding. `device=None` skips the backend check (planning for another machine).
    """
    problems = (_mesh_problems(parallel, devices) + _model_problems(model, parallel)
                + _batch_problems(parallel, global_batch, grad_accum_steps)
                + _device_problems(parallel, device, devices))
    if parallel.pp > 1 and parallel.vocab_emb_dp:
        log.info("pp=%d > 1: the word embedding is vocab-split (vocab_emb_dp is ignored when pipelining)",
                 parallel.pp)
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"invalid parallel layout: {problems[0]}")
        raise ConfigError("invalid parallel layout:\n" + "\n".join(f"  - {p}" for p in problems))
