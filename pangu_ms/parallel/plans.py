"""Shard plans as data: one pure function per model family.

A plan maps op-path globs (relative to `PanguAlphaWithLoss`: `lm.backbone.blocks.*.attention
.linear_q.matmul`; `*` stands for exactly one path component) to a strategy in LOGICAL axis names, one tuple per primitive input, one
name per tensor dimension (`None`: not split; `()` a scalar input). `RULES` maps each logical
name to a `ParallelConfig` field, so the same plan serves every mesh. A strategy of `None`
(`REPLICATED`) marks a primitive deliberately left without a strategy (casts, zeros_like):
the framework lets it follow its input.

The plan also says, as data, which cells sit on which pipeline stage, which cells are
recomputed, which cells share a gradient all-reduce fusion group, which parameters are used
on more than one stage, and whether logits are vocab-parallel (then the loss cell is
`VocabParallelCrossEntropy`). `parallelize()` applies all of it.

The plan addresses the reference primitives (`pangu_ms.kernels.reference`: `P.LayerNorm`,
Add + GeLU, BatchMatMul attention, the log-softmax loss). Where the model was built with a
fused kernel (`pangu_ms.kernels.switch`), that kernel states its own strategy
(`KernelSpec.fused_strategies`) and the plan takes it instead of the reference entries.

PanGu-alpha layout (DESIGN.md "Parallelism"): column-parallel Q/K/V and FFN fc1 (weights
split on the output dim), row-parallel attention output and fc2 (split on the input dim, the
framework all-reduces the partial sums), attention batch-matmuls and softmax over (batch,
heads), LayerNorm and residual adds over (batch, -). The tied word-embedding table has one
layout for both its users: replicated (`vocab_emb_dp`, logits replicated over mp and the
plain `CrossEntropy` loss) or vocab-split (forced when pipelining: logits vocab-parallel
and `VocabParallelCrossEntropy`). MindSpore rejects a parameter whose users split it
differently, so "replicated table + vocab-parallel logits" is not offered.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pangu_ms.config import ExpertsConfig, ModelConfig, ParallelConfig, RecomputeConfig
from pangu_ms.kernels.switch import KernelSpec

LogicalStrategy = tuple[tuple[str | None, ...], ...]
REPLICATED = None

# logical axis name -> ParallelConfig field giving its split degree
RULES: dict[str, str] = {"batch": "dp", "heads": "mp", "ffn": "mp", "vocab": "mp", "expert": "ep",
                         "expert_batch": "edp"}

# parameter leaf name -> (op attribute in the owning cell, input index) that consumes it;
# the op's strategy for that input is the parameter's layout. A cell may say otherwise with its
# own `param_consumers` (LayerNorm forms, a Linear whose bias its activation adds).
PARAM_CONSUMERS: dict[str, tuple[str, int]] = {
    "weight": ("matmul", 1), "bias": ("bias_add", 1), "embedding_table": ("gather", 0),
    # PanGu-Sigma's RRE layer: [E, ...] expert weights, split over ep on E
    "expert_w1": ("fc1", 1), "expert_b1": ("bias1", 1), "expert_w2": ("fc2", 1), "expert_b2": ("bias2", 1),
}

B, N, F, V = "batch", "heads", "ffn", "vocab"
ROW = (B, None)  # [T, H] activations split over tokens only


@dataclass(frozen=True)
class Plan:
    """Everything `parallelize()` does to a model, as data."""

    strategies: dict[str, LogicalStrategy | None]
    """op-path glob -> logical strategy (None: deliberately replicated)."""
    stages: dict[str, int] = field(default_factory=dict)
    """cell-path glob -> pipeline stage (only when pp > 1)."""
    shared_parameters: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """parameter name -> every stage that uses it (the tied embedding table)."""
    recompute: tuple[str, ...] = ()
    """cell-path globs whose activations are recomputed in the backward pass."""
    comm_fusion: dict[str, int] = field(default_factory=dict)
    """cell-path glob -> gradient all-reduce fusion index."""
    vocab_parallel_loss: bool = False
    """logits are split over the vocabulary: use `VocabParallelCrossEntropy`."""
    all_to_all: dict[str, tuple[str, str]] = field(default_factory=dict)
    """PanGu-Sigma: op path -> (layout of its input, layout of its output) where tokens change
    hands between ep ranks: dispatch (tokens split over batch -> slots split over experts) and
    combine (back). The framework inserts the exchange between the two strategies."""


def resolve(strategy: LogicalStrategy, parallel: ParallelConfig) -> tuple[tuple[int, ...], ...]:
    """Logical names -> split degrees through `RULES` (None -> 1)."""
    return tuple(tuple(1 if a is None else getattr(parallel, RULES[a]) for a in inp) for inp in strategy)


def stage_of_layer(num_layers: int, pp: int, chunks: int = 1) -> list[int]:
    """Pipeline stage of each layer (blocks, then the query layer last), spread evenly.

    With `chunks` > 1 (interleaved_1f1b) the layers form pp*chunks consecutive groups dealt out
    round-robin: group g runs on stage g % pp, so each device holds `chunks` separate groups
    (MindSpore's interleaved pass infers the chunk of a layer from that wrap-around).
    """
    groups = pp * chunks
    return [(i * groups // num_layers) % pp for i in range(num_layers)]


# ------------------------------------------------------------------- building blocks


class _Roles:
    """The entries of one role: the fused kernel's own strategy where the spec has one, else
    the reference primitives' entries given here."""

    def __init__(self, spec: KernelSpec, model: ModelConfig):
        self.spec, self.model = spec, model

    def __call__(self, role: str, prefix: str, reference: dict) -> dict:
        fused = self.spec.fused_strategies(role, prefix, self.model)
        return reference if fused is None else fused


def _layernorm(p: str, roles: _Roles) -> dict[str, LogicalStrategy]:
    return roles("layer_norm", p, {f"{p}.layer_norm": (ROW, (None,), (None,))})


def _add_layernorm(p: str, roles: _Roles) -> dict[str, LogicalStrategy]:
    return roles("add_layer_norm", p, {f"{p}.residual_add": (ROW, ROW), f"{p}.layer_norm": (ROW, (None,), (None,))})


def _column(p: str, axis: str) -> dict[str, LogicalStrategy | None]:
    """Weight [in, out] split on out: no communication in the forward pass."""
    return {f"{p}.matmul": (ROW, (None, axis)), f"{p}.bias_add": ((B, axis), (axis,)), f"{p}.cast": REPLICATED}


def _row(p: str, axis: str) -> dict[str, LogicalStrategy | None]:
    """Weight [in, out] split on in: partial sums, all-reduced over mp."""
    return {f"{p}.matmul": ((B, axis), (axis, None)), f"{p}.bias_add": (ROW, (None,)), f"{p}.cast": REPLICATED}


def _core(p: str, m: ModelConfig, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    bnsd = (B, N, None, None)  # [B, N, S, D] and [B, N, S, S] split over batch and heads
    ref: dict[str, LogicalStrategy | None] = {
        f"{p}.scale_q": (bnsd, ()), f"{p}.qk_matmul": (bnsd, bnsd), f"{p}.pv_matmul": (bnsd, bnsd),
        f"{p}.add_bias": (bnsd, (B, None, None, None)), f"{p}.softmax": (bnsd,), f"{p}.cast": REPLICATED}
    if m.dropout > 0:
        ref[f"{p}.dropout.dropout"] = (bnsd,)
    return roles("core_attention", p, ref)


def _attention(p: str, m: ModelConfig, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    out: dict[str, LogicalStrategy | None] = {}
    for name in ("linear_q", "linear_k", "linear_v"):
        out.update(_column(f"{p}.{name}", N))
    out.update(_row(f"{p}.linear_out", N))
    out.update({f"{p}.to_heads": ((B, None, N, None),), f"{p}.from_heads": ((B, N, None, None),),
                f"{p}.cast": REPLICATED, **_core(f"{p}.core", m, roles)})
    if m.dropout > 0:
        out[f"{p}.dropout.dropout"] = (ROW,)
    return out


def _ffn(p: str, m: ModelConfig, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    tf = (B, F)  # [T, F]
    fc1, act = f"{p}.linear_fc1", f"{p}.linear_fc1.activation"
    out: dict[str, LogicalStrategy | None] = {f"{fc1}.matmul": (ROW, (None, F)), f"{fc1}.cast": REPLICATED,
                                              **_row(f"{p}.linear_fc2", F)}
    out.update(roles("bias_activation", act, {f"{act}.bias_add": (tf, (F,)), f"{act}.act": (tf,)}))
    if m.dropout > 0:
        out[f"{p}.dropout.dropout"] = (ROW,)
    return out


def _layer(p: str, m: ModelConfig, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    return {**_layernorm(f"{p}.ln1", roles), **_attention(f"{p}.attention", m, roles),
            **_add_layernorm(f"{p}.ln2", roles), **_ffn(f"{p}.ffn", m, roles), f"{p}.residual_ffn": (ROW, ROW)}


def _mask(p: str, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    b4 = (B, None, None, None)  # [B, 1, S, S]
    ref = {f"{p}.same_doc": (b4, b4), f"{p}.causal": ((None, None), (None, None)), f"{p}.both": (b4, (None, None)),
           f"{p}.cast": REPLICATED, f"{p}.mask_sub": ((), b4), f"{p}.mask_to_bias": (b4, ())}
    return roles("attention_mask", p, ref)


def _loss(vocab_parallel: bool, vocab_split: bool, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    head = {"loss.head.vocab_proj": (ROW, (V if vocab_split else None, None)), "loss.head.cast": REPLICATED}
    if vocab_parallel:  # VocabParallelCrossEntropy over logits [T, V] split (batch, vocab)
        tv = (B, V)
        # the label pick is a one-hot product summed over the split vocab axis (an all-reduce)
        return {**head, "loss.max": (tv,), "loss.sub": (tv, ROW), "loss.exp": (tv,), "loss.sum": (tv,),
                "loss.log": (ROW,), "loss.log_sub": (tv, ROW), "loss.one_hot": (tv, (), ()),
                "loss.pick": (tv, tv), "loss.label_sum": (tv,),
                "loss.not_pad": ((B,), ()), "loss.cast": REPLICATED}
    return roles("lm_loss", "loss", {**head, "loss.log_softmax": (ROW,), "loss.gather": (ROW, ROW),
                                     "loss.not_pad": ((B,), ()), "loss.cast": REPLICATED})


# ------------------------------------------------------------------- the plan


def pangu_alpha_plan(model: ModelConfig, parallel: ParallelConfig,
                     recompute: RecomputeConfig | None = None, *, grad_agg_layers: int = 4,
                     kernels: KernelSpec | None = None) -> Plan:
    """The paper's layout for `PanguAlphaWithLoss(model, kernels)` on mesh `parallel` (the
    reference kernels when `kernels` is None)."""
    vocab_split = parallel.pp > 1 or not parallel.vocab_emb_dp
    vocab_parallel = vocab_split and parallel.mp > 1
    roles = _Roles(kernels or KernelSpec(), model)
    bb = "lm.backbone"
    s: dict[str, LogicalStrategy | None] = {
        # vocab-split table: ids not split (the framework masks and all-reduces over mp)
        f"{bb}.word_embedding.gather": ((V, None), (None, None)) if vocab_split else ((None, None), (B, None)),
        f"{bb}.position_embedding.gather": ((None, None), (B, None)),
        f"{bb}.top_query_embedding.gather": ((None, None), (B, None)),
        f"{bb}.embedding_add": ((B, None, None), (B, None, None)),
        **_mask(f"{bb}.attention_mask", roles),
        **_layer(f"{bb}.blocks.*", model, roles), **_layernorm(f"{bb}.final_ln", roles),
        **_layer(f"{bb}.query_layer", model, roles),
        "lm.vocab_proj": (ROW, (V if vocab_split else None, None)),  # table [V, H], transpose_b (inference)
        "lm.cast": REPLICATED,
        **_loss(vocab_parallel, vocab_split, roles),
        # PanGu-Coder's stage 2 (PanguAlphaWithMaskedLoss): unflagged labels [T] -> pad
        "label_mask.ones_like": ((B,),), "label_mask.select": ((B,), (B,), (B,)),
    }
    if model.dropout > 0:
        s[f"{bb}.embedding_dropout.dropout"] = (ROW,)
    return Plan(strategies=s, stages=_stages(model, parallel), shared_parameters=_shared(parallel),
                recompute=_recompute(recompute), comm_fusion=_fusion(model, grad_agg_layers),
                vocab_parallel_loss=vocab_parallel)


def _stages(model: ModelConfig, parallel: ParallelConfig) -> dict[str, int]:
    """Embeddings on stage 0; blocks spread evenly; final LN, query layer and head last."""
    if parallel.pp == 1:
        return {}
    last = parallel.pp - 1
    stages = {"lm.backbone": 0, "lm.backbone.word_embedding": 0, "lm.backbone.position_embedding": 0}
    for i, st in enumerate(stage_of_layer(model.num_layers, parallel.pp, parallel.pipeline_chunks)[:-1]):
        stages[f"lm.backbone.blocks.{i}"] = st
    stages.update({"lm.backbone.final_ln": last, "lm.backbone.top_query_embedding": last,
                   "lm.backbone.query_layer": last, "lm": last, "loss": last, "label_mask": last})
    return stages


def _shared(parallel: ParallelConfig) -> dict[str, tuple[int, ...]]:
    if parallel.pp == 1:
        return {}
    return {"lm.backbone.word_embedding.embedding_table": (0, parallel.pp - 1)}


def _recompute(recompute: RecomputeConfig | None) -> tuple[str, ...]:
    mode = recompute.mode if recompute is not None else "none"
    if mode == "full":
        return ("lm.backbone.blocks.*", "lm.backbone.query_layer")
    if mode == "selective":
        return ("lm.backbone.blocks.*.attention.core", "lm.backbone.query_layer.attention.core")
    return ()


def _fusion(model: ModelConfig, layers_per_group: int) -> dict[str, int]:
    """Gradient all-reduce fusion: embeddings in group 1, then every `layers_per_group` layers."""
    if layers_per_group <= 0:
        return {}
    last = 2 + (model.num_layers - 1) // layers_per_group
    out = {"lm.backbone.word_embedding": 1, "lm.backbone.position_embedding": 1}
    out.update({f"lm.backbone.blocks.{i}": 2 + i // layers_per_group for i in range(model.num_layers - 1)})
    out.update({"lm.backbone.final_ln": last, "lm.backbone.top_query_embedding": last,
                "lm.backbone.query_layer": last})
    return out


X, XB = "expert", "expert_batch"
ECH = (X, XB, None)  # [E, C, H] slots: experts over ep, capacity over the dp/ep replicas of an expert
ECF = (X, XB, F)  # [E, C, F]


def _rre_ffn(p: str, m: ModelConfig, roles: _Roles) -> dict[str, LogicalStrategy | None]:
    """`RandomRoutedExperts` at `p`: routing per token (batch-split), dispatch into expert slots,
    the experts' FFNs split over ep (experts) x dp/ep (slots) x mp (ffn), combine back to tokens."""
    a = f"{p}.activation"
    out: dict[str, LogicalStrategy | None] = {
        f"{p}.lookup": ((None,), (B,)),  # the [D*V] table is replicated; route keys [T]
        f"{p}.one_hot": ((B, None), (), ()),  # [T, E]
        # the slot of a token counts the earlier tokens of its expert over the whole batch: a scan
        # along the token axis, which no split may cut; left to the framework (replicated)
        f"{p}.cumsum": REPLICATED,
        f"{p}.dispatch": ((B, None), (B,)),  # tokens [T, H] -> slots [E*C+1, H]
        f"{p}.fc1": (ECH, (X, None, F)),
        f"{p}.bias1": (ECF, (X, None, F)),
        f"{p}.fc2": (ECF, (X, F, None)),  # partial sums over mp, all-reduced
        f"{p}.bias2": (ECH, (X, None, None)),
        f"{p}.concat": REPLICATED,
        f"{p}.combine": ((None, None), (B,)),  # slots -> tokens [T, H]
        f"{p}.cast": REPLICATED,
    }
    # the spec's bias + activation on [E, C, F] with a zero bias [F] (the experts' own bias is bias1)
    out.update(roles("bias_activation", a, {f"{a}.bias_add": (ECF, (F,)), f"{a}.act": (ECF,)}))
    if m.dropout > 0:
        out[f"{p}.dropout.dropout"] = (ROW,)
    return out


def pangu_sigma_plan(model: ModelConfig, parallel: ParallelConfig, recompute: RecomputeConfig | None = None,
                     *, experts: ExpertsConfig, grad_agg_layers: int = 4,
                     kernels: KernelSpec | None = None) -> Plan:
    """PanGu-alpha's layout for the shared layers; in each sparse layer the RRE FFN's experts split
    over ep (carved out of dp) and their FFN width over mp, with the all-to-all of dispatch and
    combine recorded in `Plan.all_to_all`. Layers are listed by index (sparse ones differ)."""
    dense = pangu_alpha_plan(model, parallel, recompute, grad_agg_layers=grad_agg_layers, kernels=kernels)
    roles = _Roles(kernels or KernelSpec(), model)
    bb = "lm.backbone"
    sparse = experts.layer_indices(model.num_layers)
    block_glob = f"{bb}.blocks.*."
    shared = {k: v for k, v in dense.strategies.items()
              if not k.startswith(block_glob) and not k.startswith(f"{bb}.query_layer.")}
    per_layer = {k[len(block_glob):]: v for k, v in dense.strategies.items() if k.startswith(block_glob)}
    a2a: dict[str, tuple[str, str]] = {}
    for i in range(model.num_layers):
        p = f"{bb}.query_layer" if i == model.num_layers - 1 else f"{bb}.blocks.{i}"
        layer = {f"{p}.{k}": v for k, v in per_layer.items()}
        if i in sparse:
            layer = {k: v for k, v in layer.items() if not k.startswith(f"{p}.ffn.")}
            layer.update(_rre_ffn(f"{p}.ffn", model, roles))
            a2a[f"{p}.ffn.dispatch"] = ("batch", "expert")
            a2a[f"{p}.ffn.combine"] = ("expert", "batch")
        shared.update(layer)
    return Plan(strategies=shared, stages=dense.stages, shared_parameters=dense.shared_parameters,
                recompute=dense.recompute, comm_fusion=dense.comm_fusion,
                vocab_parallel_loss=dense.vocab_parallel_loss, all_to_all=a2a)


PLANS = {"pangu_alpha": pangu_alpha_plan, "pangu_sigma": pangu_sigma_plan}


def plan_for(model: ModelConfig, parallel: ParallelConfig, recompute: RecomputeConfig | None = None,
             *, family: str = "pangu_alpha", experts: ExpertsConfig | None = None,
             kernels: KernelSpec | None = None) -> Plan:
    """The plan of model `family` for this mesh and recompute mode, for a model built with kernel
    spec `kernels` (None: the reference kernels); PanGu-Sigma: `experts` given, the family follows."""
    if experts is not None:
        return pangu_sigma_plan(model, parallel, recompute, experts=experts,
                                grad_agg_layers=parallel.grad_agg_layers, kernels=kernels)
    return PLANS[family](model, parallel, recompute, grad_agg_layers=parallel.grad_agg_layers, kernels=kernels)
