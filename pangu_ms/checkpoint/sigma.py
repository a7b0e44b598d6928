"""PanGu-Sigma's weight surgery on whole tensors (NumPy, names as in `PanguSigmaLM`):
dense-to-sparse initialisation (FFN2MoE), adding and removing a domain, extracting one
domain's sub-model. `pangu_ms.cli.sigma` reads and writes the checkpoints around these.

Every function takes and returns `{name: array}` of one model plus its `ExpertsConfig`; the
names carry `prefix` (the checkpoint's `lm.`). An RRE layer at path P holds
`P.ffn.expert_w1 [E, H, F]`, `expert_b1 [E, 1, F]`, `expert_w2 [E, F, H]`, `expert_b2 [E, 1, H]` and
`P.ffn.route [D, V]`; a domain's experts are the contiguous rows `expert_offsets()[d]` onward.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from pangu_ms.checkpoint import store
from pangu_ms.config import DomainConfig, ExpertsConfig, ModelConfig
from pangu_ms.errors import CheckpointError
from pangu_ms.models.pangu_sigma import EXPERT_PARAMS, ROUTE, domain_table, routing_table

DENSE_FFN = {"expert_w1": "linear_fc1.weight", "expert_b1": "linear_fc1.bias",
             "expert_w2": "linear_fc2.weight", "expert_b2": "linear_fc2.bias"}
"""expert tensor -> the dense FFN tensor it copies (one expert's slice: [H, F], [1, F], [F, H], [1, H])."""


def _expert_copies(w: np.ndarray, n: int) -> np.ndarray:
    """n copies of a dense FFN tensor as expert rows: [n, *w] for weights, [n, 1, *w] for biases."""
    w = w.reshape((1,) + w.shape) if w.ndim == 1 else w
    return np.ascontiguousarray(np.broadcast_to(w, (n,) + w.shape))


def layer_path(cfg: ModelConfig, index: int) -> str:
    """Path of layer `index` (0-based, the query layer last) inside the LM."""
    return "backbone.query_layer" if index == cfg.num_layers - 1 else f"backbone.blocks.{index}"


def sparse_paths(cfg: ModelConfig, experts: ExpertsConfig) -> list[tuple[int, str]]:
    """(layer index, FFN path) of every sparse layer."""
    return [(i, layer_path(cfg, i) + ".ffn") for i in experts.layer_indices(cfg.num_layers)]


def _need(weights: dict[str, np.ndarray], name: str, what: str) -> np.ndarray:
    if name not in weights:
        raise CheckpointError(f"{what}: tensor '{name}' is missing; is this the model the config describes?")
    return weights[name]


def dense_to_sparse(dense: dict[str, np.ndarray], cfg: ModelConfig, experts: ExpertsConfig, *,
                    prefix: str = "") -> dict[str, np.ndarray]:
    """FFN2MoE: the Sigma weights from a PanGu-alpha model's. Every dense tensor is copied; in
    each sparse layer every expert is an exact copy of that layer's FFN, and the routing tables
    are drawn from `experts.routing_seed`. No noise: the Sigma model computes the dense function."""
    out = dict(dense)
    e = experts.num_experts
    for index, ffn in sparse_paths(cfg, experts):
        for ours, theirs in DENSE_FFN.items():
            name = f"{prefix}{ffn}.{theirs}"
            w = _need(dense, name, "dense checkpoint")
            del out[name]
            out[f"{prefix}{ffn}.{ours}"] = _expert_copies(w, e)
        out[f"{prefix}{ffn}.{ROUTE}"] = routing_table(experts, cfg.vocab_size, index)
    return out


def _domain_rows(experts: ExpertsConfig, name: str) -> tuple[int, int, int]:
    """(domain id, first expert, expert count) of domain `name`."""
    try:
        d = experts.domain_id(name)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return d, experts.expert_offsets()[d], experts.domains[d].experts


def add_domain(weights: dict[str, np.ndarray], cfg: ModelConfig, experts: ExpertsConfig, name: str, num_experts: int,
               *, from_domain: str | None = None, dense: dict[str, np.ndarray] | None = None,
               prefix: str = "") -> tuple[dict[str, np.ndarray], ExpertsConfig]:
    """A new domain `name` with `num_experts` experts per sparse layer, appended after the others
    (their experts, routes and outputs are untouched).

    Its experts start as copies of domain `from_domain`'s (expert j copies that group's expert
    j mod its size; with equal group sizes the new routing table is the source's, shifted, so
    the new domain starts with the source domain's function) or, with `dense` (a PanGu-alpha
    model's weights), of that model's FFN in each layer with a freshly drawn routing map."""
    if name in experts.domain_names:
        raise CheckpointError(f"domain {name!r} already exists ({', '.join(experts.domain_names)}); "
                              "pick a new name or remove it first")
    if (from_domain is None) == (dense is None):
        raise CheckpointError("add-domain: give exactly one source for the new experts: --from-domain NAME "
                              "or --from-dense CKPT")
    if num_experts < 1:
        raise CheckpointError(f"add-domain: --experts {num_experts} must be >= 1")
    new_d, new_off = len(experts.domains), experts.num_experts
    out = dict(weights)
    for index, ffn in sparse_paths(cfg, experts):
        route = _need(weights, f"{prefix}{ffn}.{ROUTE}", "sigma checkpoint")
        if from_domain is not None:
            src_d, src_off, src_n = _domain_rows(experts, from_domain)
            pick = src_off + np.arange(num_experts) % src_n
            for p in EXPERT_PARAMS:
                w = _need(weights, f"{prefix}{ffn}.{p}", "sigma checkpoint")
                out[f"{prefix}{ffn}.{p}"] = np.concatenate([w, w[pick]])
            if src_n == num_experts:
                row = (route[src_d] - src_off + new_off).astype(np.int32)
            else:
                row = domain_table(experts.routing_seed, index, new_d, cfg.vocab_size, new_off, num_experts)
        else:
            for p, dense_name in DENSE_FFN.items():
                w = _need(weights, f"{prefix}{ffn}.{p}", "sigma checkpoint")
                base = _need(dense, f"{prefix}{ffn}.{dense_name}", "dense checkpoint")
                out[f"{prefix}{ffn}.{p}"] = np.concatenate([w, _expert_copies(base, num_experts)])
            row = domain_table(experts.routing_seed, index, new_d, cfg.vocab_size, new_off, num_experts)
        out[f"{prefix}{ffn}.{ROUTE}"] = np.concatenate([route, row[None]]).astype(np.int32)
    domains = list(experts.domains) + [DomainConfig(name=name, experts=num_experts)]
    return out, dataclasses.replace(experts, domains=domains)


def remove_domain(weights: dict[str, np.ndarray], cfg: ModelConfig, experts: ExpertsConfig, name: str, *,
                  prefix: str = "") -> tuple[dict[str, np.ndarray], ExpertsConfig]:
    """Delete domain `name`: its experts and its routing row; the later domains' routes shift down
    by its group size, so every other domain keeps its experts and its outputs."""
    if len(experts.domains) == 1:
        raise CheckpointError(f"remove-domain: {name!r} is the only domain; a Sigma model needs one")
    d, off, n = _domain_rows(experts, name)
    out = dict(weights)
    for _, ffn in sparse_paths(cfg, experts):
        for p in EXPERT_PARAMS:
            w = _need(weights, f"{prefix}{ffn}.{p}", "sigma checkpoint")
            out[f"{prefix}{ffn}.{p}"] = np.concatenate([w[:off], w[off + n:]])
        route = np.delete(_need(weights, f"{prefix}{ffn}.{ROUTE}", "sigma checkpoint"), d, axis=0)
        out[f"{prefix}{ffn}.{ROUTE}"] = np.where(route >= off + n, route - n, route).astype(np.int32)
    domains = [x for x in experts.domains if x.name != name]
    return out, dataclasses.replace(experts, domains=domains)


def extract_domain(weights: dict[str, np.ndarray], cfg: ModelConfig, experts: ExpertsConfig, name: str, *,
                   prefix: str = "") -> tuple[dict[str, np.ndarray], ExpertsConfig]:
    """The single-domain sub-model: the shared layers plus domain `name`'s experts, its routing
    row re-based to expert 0 (the sub-model's only domain has id 0)."""
    d, off, n = _domain_rows(experts, name)
    out = dict(weights)
    for _, ffn in sparse_paths(cfg, experts):
        for p in EXPERT_PARAMS:
            out[f"{prefix}{ffn}.{p}"] = np.ascontiguousarray(
                _need(weights, f"{prefix}{ffn}.{p}", "sigma checkpoint")[off:off + n])
        route = _need(weights, f"{prefix}{ffn}.{ROUTE}", "sigma checkpoint")
        out[f"{prefix}{ffn}.{ROUTE}"] = (route[d:d + 1] - off).astype(np.int32)
    return out, dataclasses.replace(experts, domains=[DomainConfig(name=name, experts=n)])


# --------------------------------------------------------------------------- checkpoints on disk

LM = "lm."


def read_model(path: str | Path) -> tuple[Path, Any, dict[str, np.ndarray], dict[str, Any]]:
    """(step dir, JobConfig, `lm.*` weights, meta) of the newest complete checkpoint under `path`,
    assembled whole from any layout (the optimizer state is not read)."""
    from pangu_ms.checkpoint.inference import model_weights, newest_complete
    from pangu_ms.checkpoint.training import load_job_config

    step_dir = newest_complete(path)
    return step_dir, load_job_config(step_dir), model_weights(step_dir), store.read_json(step_dir / store.META)


def write_model(out_run_dir: str | Path, job, weights: dict[str, np.ndarray], *, step: int,
                tokenizer_dir: str | None, extra_meta: dict[str, Any] | None = None) -> Path:
    """A complete one-rank checkpoint (weights only) of `weights` under `out_run_dir/checkpoints/`,
    with `job` as its config.yaml (the mesh set to one device)."""
    from pangu_ms.checkpoint.layout import build_layout
    from pangu_ms.checkpoint.reshard import write_step
    from pangu_ms.checkpoint.safetensors_io import dtype_name

    root = store.checkpoints_root(out_run_dir)
    if store.list_step_dirs(root):
        raise CheckpointError(f"{out_run_dir} already holds checkpoints; write to a new directory")
    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    layout = build_layout([(k, v.shape, dtype_name(v.dtype)) for k, v in arrays.items()], {})
    job = dataclasses.replace(job, parallel=dataclasses.replace(job.parallel, dp=1, mp=1, pp=1, ep=1,
                                                                optimizer_shard=False))
    meta = {"step": step, "data_step": 0, "tokens_seen": 0, "time": time.time(), "weights": "model.safetensors",
            **(extra_meta or {})}
    return write_step(root, step, layout, arrays.__getitem__, meta=meta, config_yaml=job.to_yaml(),
                      tokenizer_dir=tokenizer_dir, params=set(arrays))


def model_bytes(weights: dict[str, np.ndarray]) -> int:
    return int(sum(v.nbytes for v in weights.values()))


def _tokenizer_dir(step_dir: Path) -> str | None:
    d = step_dir / store.TOKENIZER
    return str(d) if d.is_dir() else None


SHAPE_FIELDS = ("vocab_size", "seq_length", "num_layers", "hidden_size", "ffn_hidden_size", "num_heads")


def init_from_dense(src: str | Path, sigma_job, out_run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """`sigma init`: the Sigma checkpoint of `sigma_job` (a config with `experts:`) from the dense
    PanGu-alpha checkpoint under `src`. Returns (step dir, report)."""
    if sigma_job.experts is None:
        raise CheckpointError("sigma init: the --config has no experts: section; use a PanGu-Sigma config "
                              "(e.g. ascend_configs/models/pangu_sigma_tiny.yaml)")
    step_dir, dense_job, weights, _ = read_model(src)
    if dense_job.experts is not None:
        raise CheckpointError(f"sigma init: {step_dir} is already a PanGu-Sigma checkpoint; --from takes a "
                              "dense PanGu-alpha one")
    diff = [f"model.{f}: checkpoint {getattr(dense_job.model, f)} vs config {getattr(sigma_job.model, f)}"
            for f in SHAPE_FIELDS if getattr(dense_job.model, f) != getattr(sigma_job.model, f)]
    if diff:
        raise CheckpointError(f"sigma init: the config's dense shape differs from {step_dir}'s ({'; '.join(diff)}); "
                              "base the Sigma config on the dense model's config")
    sparse = dense_to_sparse(weights, sigma_job.model, sigma_job.experts, prefix=LM)
    out = write_model(out_run_dir, sigma_job, sparse, step=0, tokenizer_dir=_tokenizer_dir(step_dir),
                      extra_meta={"sigma": {"init_from": str(step_dir)}})
    return out, {"from": str(step_dir), "dense_bytes": model_bytes(weights), "sigma_bytes": model_bytes(sparse)}


def _sigma_source(path: str | Path, what: str):
    step_dir, job, weights, meta = read_model(path)
    if job.experts is None:
        raise CheckpointError(f"sigma {what}: {step_dir} is a dense PanGu-alpha checkpoint; run `sigma init` first")
    return step_dir, job, weights, meta


def edit_domains(path: str | Path, out_run_dir: str | Path, action: str, name: str, *, num_experts: int = 0,
                 from_domain: str | None = None, from_dense: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """`sigma add-domain | remove-domain | extract` on the checkpoint under `path`; returns
    (step dir written, report with both sizes and the domains before and after)."""
    step_dir, job, weights, meta = _sigma_source(path, action)
    cfg, ex = job.model, job.experts
    if action == "add-domain":
        dense = None
        if from_dense is not None:
            dense_dir, dense_job, dense, _ = read_model(from_dense)
            if dense_job.experts is not None or any(getattr(dense_job.model, f) != getattr(cfg, f)
                                                    for f in SHAPE_FIELDS):
                raise CheckpointError(f"sigma add-domain: --from-dense {dense_dir} is not a dense model of this "
                                      "Sigma model's shape")
        new, new_ex = add_domain(weights, cfg, ex, name, num_experts, from_domain=from_domain, dense=dense,
                                 prefix=LM)
    elif action == "remove-domain":
        new, new_ex = remove_domain(weights, cfg, ex, name, prefix=LM)
    elif action == "extract":
        new, new_ex = extract_domain(weights, cfg, ex, name, prefix=LM)
    else:
        raise ValueError(f"edit_domains: unknown action {action!r}")
    new_job = dataclasses.replace(job, experts=new_ex)
    out = write_model(out_run_dir, new_job, new, step=int(meta.get("step", 0)), tokenizer_dir=_tokenizer_dir(step_dir),
                      extra_meta={"sigma": {action: name, "from": str(step_dir)}})
    return out, {"from": str(step_dir), "source_bytes": model_bytes(weights), "output_bytes": model_bytes(new),
                 "domains_before": ex.domain_names, "domains_after": new_ex.domain_names,
                 "experts_before": ex.num_experts, "experts_after": new_ex.num_experts}


def load_sigma_lm(path: str | Path):
    """(JobConfig, PanguSigmaLM in eval mode with the checkpoint's weights) from a Sigma checkpoint."""
    import mindspore as ms

    from pangu_ms.checkpoint.training import load_into
    from pangu_ms.models.pangu_sigma import PanguSigmaLM

    step_dir, job, weights, _ = _sigma_source(path, "load")
    lm = PanguSigmaLM(job.model, job.experts)
    tensors = {k[len(LM):]: ms.Parameter(ms.Tensor(v), name=k[len(LM):]) for k, v in weights.items()}
    missing = load_into(lm, tensors, step_dir)
    if missing:
        raise CheckpointError(f"{step_dir}: weights do not fit the Sigma config: missing {missing[:3]}")
    lm.set_train(False)
    return job, lm
