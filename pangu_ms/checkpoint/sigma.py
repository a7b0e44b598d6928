"""PanGu-Sigma's weight surgery on whole tensors (NumPy, names as in `PanguSigmaLM`):
dense-to-sparse initialisation (FFN2MoE), adding and removing a domain, extracting one
domain's sub-model. `pangu_ms.cli.sigma` reads and writes the checkpoints around these.

Every function takes and returns `{name: array}` of one model plus its `ExpertsConfig`; the
names carry `prefix` (the checkpoint's `lm.`). An RRE layer at path P holds
`P.ffn.expert_w1 [E, H, F]`, `expert_b1 [E, F]`, `expert_w2 [E, F, H]`, `expert_b2 [E, H]` and
`P.ffn.route [D, V]`; a domain's experts are the contiguous rows `expert_offsets()[d]` onward.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pangu_ms.config import DomainConfig, ExpertsConfig, ModelConfig
from pangu_ms.errors import CheckpointError
from pangu_ms.models.pangu_sigma import EXPERT_PARAMS, ROUTE, domain_table, routing_table

DENSE_FFN = {"expert_w1": "linear_fc1.weight", "expert_b1": "linear_fc1.bias",
             "expert_w2": "linear_fc2.weight", "expert_b2": "linear_fc2.bias"}
"""expert tensor -> the dense FFN tensor it copies (same shape without the leading E axis)."""


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
            out[f"{prefix}{ffn}.{ours}"] = np.ascontiguousarray(np.broadcast_to(w, (e,) + w.shape))
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
                out[f"{prefix}{ffn}.{p}"] = np.concatenate([w, np.broadcast_to(base, (num_experts,) + base.shape)])
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
