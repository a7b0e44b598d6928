"""PanGu-Sigma (Ren et al. 2023, arXiv:2303.10845): PanGu-alpha whose top layers are Random
Routed Experts (RRE) layers.

Notation as in `pangu_alpha`: B batch, S sequence, H hidden, F ffn width, V vocab, T = B*S;
E experts of a sparse layer (all domains), C slots per expert, D domains.

The model is PanGu-alpha's: the same embeddings, attention, LayerNorms and dense FFNs (the
Cells of `pangu_alpha`, so the kernel choices that apply to them apply here). In a sparse
layer the FFN is replaced by E expert FFNs and a routing table; nothing else changes.

Routing (two levels, no learned gate, no auxiliary loss), per sparse layer:
    expert(t) = table[domain(t), token(t)]                       table: [D, V] int32
A domain owns a contiguous group of experts; inside it the table is a fixed random map drawn
once from `experts.routing_seed` (per layer and domain: a random permutation of the vocabulary
taken modulo the group size, so every expert gets the same number of token ids). The table is
a Parameter with requires_grad=False: saved in every checkpoint, never trained.

Dispatch and combine with static shapes (named ops a plan can shard):
    pos(t)   = number of earlier tokens sent to expert(t)              [T]
    slot(t)  = expert(t) * C + pos(t) if pos(t) < C else E*C (dropped)   [T]
    X_e      = dispatch(x, slot) -> [E*C (+1 drop row), H] -> [E, C, H]
    Y_e      = act(X_e W1_e + b1_e) W2_e + b2_e                           [E, C, H]
    y(t)     = combine(Y, slot) (0 for a dropped token: it keeps its residual only)
With `capacity_factor` None, C = T and no token drops.

With no sparse layer, or one domain with one expert holding the dense FFN's weights, the model
computes PanGu-alpha's function (tests compare them).
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.common.initializer import Normal, Zero, initializer
from mindspore.ops import operations as P

from pangu_ms.config import ExpertsConfig, ModelConfig
from pangu_ms.kernels.reference import compute_dtype
from pangu_ms.kernels.switch import KernelSpec, kernel_spec
from pangu_ms.models.pangu_alpha import Block, PanguAlpha, PanguAlphaLM, PanguAlphaWithLoss, QueryLayer, \
    count_parameters as dense_count

EXPERT_PARAMS = ("expert_w1", "expert_b1", "expert_w2", "expert_b2")
"""Parameter names of the expert weights inside an RRE layer (`<layer>.ffn.<name>`), leading axis E."""
ROUTE = "route"
"""Name of the routing table inside an RRE layer (`<layer>.ffn.route`, [D, V] int32, not trained)."""


def domain_table(seed: int, layer: int, domain: int, vocab_size: int, offset: int, experts: int) -> np.ndarray:
    """token id -> global expert index for one domain of one layer [V] int32: `offset` + a random
    permutation of the vocabulary modulo `experts` (drawn from (seed, layer, domain))."""
    perm = np.random.default_rng([seed, layer, domain]).permutation(vocab_size)
    return (offset + perm % experts).astype(np.int32)


def routing_table(experts: ExpertsConfig, vocab_size: int, layer: int) -> np.ndarray:
    """The [D, V] int32 routing table of sparse layer `layer` (0-based over all layers)."""
    offsets = experts.expert_offsets()
    return np.stack([domain_table(experts.routing_seed, layer, d, vocab_size, offsets[d], dom.experts)
                     for d, dom in enumerate(experts.domains)])


def route_tokens(table: np.ndarray, input_ids: np.ndarray, domain_ids: np.ndarray, capacity: int,
                 num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per expert and tokens dropped per expert of one layer for a batch (NumPy, exact).

    table [D, V], input_ids [B, S], domain_ids [B] -> (load [E], dropped [E]) int64. Routing
    depends on token ids and domains only, so this is what the layer does on the device."""
    expert = table[np.asarray(domain_ids)[:, None], np.asarray(input_ids)].reshape(-1)
    load = np.bincount(expert, minlength=num_experts).astype(np.int64)
    return load, np.maximum(load - capacity, 0)


class RandomRoutedExperts(nn.Cell):
    """The RRE layer's FFN: (x [T, H] fp32, route key [T] int32 = domain * V + token) -> [T, H].

    `expert_w1` [E, H, F], `expert_b1` [E, 1, F], `expert_w2` [E, F, H], `expert_b2` [E, 1, H] (the
    biases 3-D so that the op adding them states their layout);
    `route` [D, V] int32 (requires_grad False). Dispatch (`dispatch`, an unsorted segment sum
    into E*C+1 slots) and combine (`combine`, a gather back) are the named ops a plan shards.

    The activation is the spec's `bias_activation` role (the dense FFN's): the per-expert bias
    [E, 1, F] is added first (`bias1`) and the role gets a zero bias [F], since a fused kernel
    takes one bias row for all tokens (adding 0.0 leaves every value as it was).
    """

    def __init__(self, cfg: ModelConfig, experts: ExpertsConfig, table: np.ndarray, spec: KernelSpec):
        super().__init__()
        e, h, f = experts.num_experts, cfg.hidden_size, cfg.ffn_hidden_size
        out_std = cfg.init_std / math.sqrt(2.0 * cfg.num_layers)
        self.num_experts = e
        self.capacity_factor = experts.capacity_factor
        self.expert_w1 = Parameter(initializer(Normal(sigma=cfg.init_std), (e, h, f), ms.float32), name="expert_w1")
        self.expert_b1 = Parameter(initializer(Zero(), (e, 1, f), ms.float32), name="expert_b1")
        self.expert_w2 = Parameter(initializer(Normal(sigma=out_std), (e, f, h), ms.float32), name="expert_w2")
        self.expert_b2 = Parameter(initializer(Zero(), (e, 1, h), ms.float32), name="expert_b2")
        self.route = Parameter(Tensor(np.asarray(table, np.int32)), name=ROUTE, requires_grad=False)
        self.lookup = P.Gather()
        self.one_hot = P.OneHot()
        self.cumsum = P.CumSum()
        self.dispatch = P.UnsortedSegmentSum()
        self.combine = P.Gather()
        self.fc1 = P.BatchMatMul()
        self.fc2 = P.BatchMatMul()
        self.bias1 = P.Add()
        self.bias2 = P.Add()
        self.activation = spec.bias_activation(cfg.activation)  # act(z + 0), z already has b1_e
        self.zero_bias = Tensor(np.zeros(f, np.float32))
        self.concat = P.Concat(0)
        self.low_precision = cfg.compute_dtype != "float32"
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.cast = P.Cast()
        self.dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else None

    def capacity(self, tokens: int) -> int:
        """Slots per expert for `tokens` tokens (`ExpertsConfig.capacity`)."""
        if self.capacity_factor is None:
            return tokens
        return max(1, min(tokens, math.ceil(self.capacity_factor * tokens / self.num_experts)))

    def slots(self, route_key):
        """route key [T] -> slot [T] int32 in [0, E*C] (E*C: dropped)."""
        t, e = route_key.shape[0], self.num_experts
        c = self.capacity(t)
        expert = self.lookup(self.route.reshape(-1), route_key, 0)  # [T] global expert index
        hot = self.one_hot(expert, e, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))  # [T, E]
        pos = (self.cumsum(hot, 0) * hot).sum(-1) - 1.0  # [T] earlier tokens of the same expert
        pos = self.cast(pos, ms.int32)
        kept = pos < c
        return ms.ops.stop_gradient(ms.ops.where(kept, expert * c + pos, e * c))

    def construct(self, x, route_key):
        t, h = x.shape
        e = self.num_experts
        c = self.capacity(t)
        slot = self.slots(route_key)  # [T]
        buf = self.dispatch(x, slot, e * c + 1)[: e * c].reshape(e, c, h)  # [E, C, H]
        w1, w2 = self.expert_w1, self.expert_w2
        if self.low_precision:
            buf, w1, w2 = self.cast(buf, self.dtype), self.cast(w1, self.dtype), self.cast(w2, self.dtype)
        z = self.fc1(buf, w1)  # [E, C, F]
        if self.low_precision:
            z = self.cast(z, ms.float32)
        a = self.activation(self.bias1(z, self.expert_b1), self.zero_bias)  # [E, C, F]
        if self.low_precision:
            a = self.cast(a, self.dtype)
        y = self.fc2(a, w2)  # [E, C, H]
        if self.low_precision:
            y = self.cast(y, ms.float32)
        y = self.bias2(y, self.expert_b2).reshape(e * c, h)  # [E*C, H]
        y = self.concat((y, ms.ops.zeros((1, h), ms.float32)))  # the drop slot gives 0
        out = self.combine(y, slot, 0)  # [T, H]
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class SharedBlock(Block):
    """A dense block in the Sigma stack (shared by all domains): `Block` taking the route key."""

    def construct(self, h, mask, route_key):
        x = self.ln1(h)
        h, x = self.ln2(self.attention(x, x, mask), h)  # h + Attn(x), LN2 of that
        return self.residual_ffn(h, self.ffn(x))


class RoutedBlock(Block):
    """A sparse block: `Block` with the FFN replaced by `RandomRoutedExperts`."""

    def __init__(self, cfg: ModelConfig, spec: KernelSpec, experts: ExpertsConfig, table: np.ndarray):
        super().__init__(cfg, spec)
        self.ffn = RandomRoutedExperts(cfg, experts, table, spec)

    def construct(self, h, mask, route_key):
        x = self.ln1(h)
        h, x = self.ln2(self.attention(x, x, mask), h)
        return self.residual_ffn(h, self.ffn(x, route_key))


class RoutedQueryLayer(QueryLayer):
    """The top query layer with an RRE FFN."""

    def __init__(self, cfg: ModelConfig, spec: KernelSpec, experts: ExpertsConfig, table: np.ndarray):
        super().__init__(cfg, spec)
        self.ffn = RandomRoutedExperts(cfg, experts, table, spec)

    def construct(self, h, query, mask, route_key):
        h, x = self.ln2(self.attention(query, self.ln1(h), mask), h)
        return self.residual_ffn(h, self.ffn(x, route_key))


class SharedQueryLayer(QueryLayer):
    """The dense top query layer taking the route key."""

    def construct(self, h, query, mask, route_key):
        h, x = self.ln2(self.attention(query, self.ln1(h), mask), h)
        return self.residual_ffn(h, self.ffn(x))


class PanguSigma(PanguAlpha):
    """The backbone: ids, position ids, document ids [B, S], domain ids [B] -> h [T, H]."""

    def __init__(self, cfg: ModelConfig, experts: ExpertsConfig, spec: KernelSpec):
        super().__init__(cfg, spec)
        self.experts = experts
        n = cfg.num_layers
        self.sparse_layers = tuple(experts.layer_indices(n))

        def layer(i: int, routed: type, shared: type) -> nn.Cell:
            if i in self.sparse_layers:
                return routed(cfg, spec, experts, routing_table(experts, cfg.vocab_size, i))
            return shared(cfg, spec)

        self.blocks = nn.CellList([layer(i, RoutedBlock, SharedBlock) for i in range(n - 1)])
        self.query_layer = layer(n - 1, RoutedQueryLayer, SharedQueryLayer)
        self.vocab_size = cfg.vocab_size

    def construct(self, input_ids, position_ids, document_ids, domain_ids):
        b, s = input_ids.shape
        mask = self.attention_mask(document_ids)  # causal within each document, built once
        route_key = (domain_ids.reshape(b, 1) * self.vocab_size + input_ids).reshape(-1)  # [T]
        h = self.embedding_add(self.word_embedding(input_ids), self.position_embedding(position_ids))
        h = h.reshape(b * s, -1)  # [T, H]
        if self.embedding_dropout is not None:
            h = self.embedding_dropout(h)
        for block in self.blocks:
            h = block(h, mask, route_key)
        h = self.final_ln(h)
        query = self.top_query_embedding(position_ids).reshape(b * s, -1)  # [T, H]
        return self.query_layer(h, query, mask, route_key)  # [T, H]


class PanguSigmaLM(PanguAlphaLM):
    """Sigma backbone plus the tied head: (ids, positions, document ids [B, S], domain ids [B]) ->
    logits [T, V]. `kernels` as for `PanguAlphaLM`."""

    def __init__(self, cfg: ModelConfig, experts: ExpertsConfig, kernels: KernelSpec | None = None):
        spec = kernels or kernel_spec(cfg.kernels)
        super().__init__(cfg, spec)
        self.experts = experts
        self.backbone = PanguSigma(cfg, experts, spec)

    def construct(self, input_ids, position_ids, document_ids, domain_ids):
        return self.logits(self.backbone(input_ids, position_ids, document_ids, domain_ids))


class PanguSigmaWithLoss(PanguAlphaWithLoss):
    """Training wrapper: (rows [B, S+1], positions, document ids [B, S], domain ids [B]) -> loss."""

    def __init__(self, cfg: ModelConfig, experts: ExpertsConfig, kernels: KernelSpec | None = None):
        spec = kernels or kernel_spec(cfg.kernels)
        super().__init__(cfg, spec)
        self.experts = experts
        self.lm = PanguSigmaLM(cfg, experts, spec)

    def construct(self, input_ids, position_ids, document_ids, domain_ids):
        s = self.config.seq_length
        tokens = input_ids[:, :s]  # [B, S]
        labels = input_ids[:, 1:].reshape(-1)  # [T]
        h = self.lm.backbone(tokens, position_ids, document_ids, domain_ids)  # [T, H]
        return self.loss(h, self.lm.backbone.word_embedding.embedding_table, labels)


def is_expert_parameter(name: str) -> bool:
    """True for the expert weights of an RRE layer (by their Parameter name)."""
    return name.rsplit(".", 1)[-1] in EXPERT_PARAMS


def count_parameters(cfg: ModelConfig, experts: ExpertsConfig) -> int:
    """Exact trainable parameter count of `PanguSigmaLM(cfg, experts)` from the shapes alone.

    The dense count (`pangu_alpha.count_parameters`) with each sparse layer's FFN (2HF + F + H)
    counted E times instead of once; the routing tables are not trainable and not counted."""
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    ffn = 2 * h * f + f + h
    sparse = len(experts.layer_indices(cfg.num_layers))
    return dense_count(cfg) + sparse * (experts.num_experts - 1) * ffn
