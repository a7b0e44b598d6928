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

from pangu_ms.config import ModelConfig, ParallelConfig, RecomputeConfig

LogicalStrategy = tuple[tuple[str | None, ...], ...]
REPLICATED = None

# logical axis name -> ParallelConfig field giving its split degree
RULES: dict[str, str] = {"batch": "dp", "heads": "mp", "ffn": "mp", "vocab": "mp", "expert": "ep"}

# parameter leaf name -> (op attribute in the owning cell, input index) that consumes it;
# the op's strategy for that input is the parameter's layout
PARAM_CONSUMERS: dict[str, tuple[str, int]] = {
    "weight": ("matmul", 1), "bias": ("bias_add", 1), "gamma": ("scale", 1), "beta": ("shift", 1),
    "embedding_table": ("gather", 0),
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


def _layernorm(p: str) -> dict[str, LogicalStrategy]:
    return {f"{p}.mean": (ROW,), f"{p}.sub": (ROW, ROW), f"{p}.square": (ROW, ROW), f"{p}.rsqrt": (ROW,),
            f"{p}.add_eps": (ROW, ()), f"{p}.normalize": (ROW, ROW), f"{p}.scale": (ROW, (None,)),
            f"{p}.shift": (ROW, (None,))}


def _column(p: str, axis: str) -> dict[str, LogicalStrategy | None]:
    """Weight [in, out] split on out: no communication in the forward pass."""
    return {f"{p}.matmul": (ROW, (None, axis)), f"{p}.bias_add": ((B, axis), (axis,)), f"{p}.cast": REPLICATED}


def _row(p: str, axis: str) -> dict[str, LogicalStrategy | None]:
    """Weight [in, out] split on in: partial sums, all-reduced over mp."""
    return {f"{p}.matmul": ((B, axis), (axis, None)), f"{p}.bias_add": (ROW, (None,)), f"{p}.cast": REPLICATED}


def _attention(p: str, m: ModelConfig) -> dict[str, LogicalStrategy | None]:
    bnsd = (B, N, None, None)  # [B, N, S, D] and [B, N, S, S] split over batch and heads
    out: dict[str, LogicalStrategy | None] = {}
    for name in ("linear_q", "linear_k", "linear_v"):
        out.update(_column(f"{p}.{name}", N))
    out.update(_row(f"{p}.linear_out", N))
    out.update({f"{p}.scale_q": ((B, N), ()), f"{p}.to_heads": ((B, None, N, None),),
                f"{p}.from_heads": (bnsd,), f"{p}.cast": REPLICATED,
                f"{p}.core.qk_matmul": (bnsd, bnsd), f"{p}.core.pv_matmul": (bnsd, bnsd),
                f"{p}.core.add_bias": (bnsd, (B, None, None, None)), f"{p}.core.softmax": (bnsd,),
                f"{p}.core.cast": REPLICATED})
    # mirrors Attention.__init__: the hand-written backward is used without dropout in fp32
    if m.dropout == 0.0 and m.compute_dtype == "float32":
        out.update({f"{p}.core.{op}": (bnsd, bnsd) for op in ("do_v", "ds_k", "ds_q", "p_do")})
        out.update({f"{p}.core.row_sum": (bnsd,), f"{p}.core.zeros_like": REPLICATED})
    if m.dropout > 0:
        out.update({f"{p}.core.dropout.dropout": (bnsd,), f"{p}.dropout.dropout": (ROW,)})
    return out


def _ffn(p: str, m: ModelConfig) -> dict[str, LogicalStrategy | None]:
    tf = (B, F)  # [T, F]
    out: dict[str, LogicalStrategy | None] = {**_column(f"{p}.linear_fc1", F), **_row(f"{p}.linear_fc2", F)}
    a = f"{p}.activation"
    out.update({f"{a}.square": (tf, tf), f"{a}.poly": (tf, ()), f"{a}.add": (tf, ()), f"{a}.inner": (tf, tf),
                f"{a}.sigmoid": (tf,), f"{a}.gate": (tf, tf)})
    if m.dropout > 0:
        out[f"{p}.dropout.dropout"] = (ROW,)
    return out


def _layer(p: str, m: ModelConfig) -> dict[str, LogicalStrategy | None]:
    return {**_layernorm(f"{p}.ln1"), **_attention(f"{p}.attention", m), **_layernorm(f"{p}.ln2"),
            **_ffn(f"{p}.ffn", m), f"{p}.residual_attn": (ROW, ROW), f"{p}.residual_ffn": (ROW, ROW)}


def _loss(vocab_parallel: bool) -> dict[str, LogicalStrategy | None]:
    if vocab_parallel:  # VocabParallelCrossEntropy over logits [T, V] split (batch, vocab)
        tv = (B, V)
        # the label pick is a one-hot product summed over the split vocab axis (an all-reduce)
        return {"loss.max": (tv,), "loss.sub": (tv, ROW), "loss.exp": (tv,), "loss.sum": (tv,),
                "loss.log": (ROW,), "loss.log_sub": (tv, ROW), "loss.one_hot": (tv, (), ()),
                "loss.pick": (tv, tv), "loss.label_sum": (tv,),
                "loss.not_pad": ((B,), ()), "loss.cast": REPLICATED}
    return {"loss.log_softmax": (ROW,), "loss.gather": (ROW, ROW), "loss.not_pad": ((B,), ()),
            "loss.softmax_minus_onehot": (ROW, (B,)), "loss.cast": REPLICATED, "loss.zeros_like": REPLICATED}


# ------------------------------------------------------------------- the plan


def pangu_alpha_plan(model: ModelConfig, parallel: ParallelConfig,
                     recompute: RecomputeConfig | None = None, *, grad_agg_layers: int = 4) -> Plan:
    """The paper's layout for `PanguAlphaWithLoss(model)` on mesh `parallel`."""
    vocab_split = parallel.pp > 1 or not parallel.vocab_emb_dp
    vocab_parallel = vocab_split and parallel.mp > 1
    bb = "lm.backbone"
    s: dict[str, LogicalStrategy | None] = {
        # vocab-split table: ids not split (the framework masks and all-reduces over mp)
        f"{bb}.word_embedding.gather": ((V, None), (None, None)) if vocab_split else ((None, None), (B, None)),
        f"{bb}.position_embedding.gather": ((None, None), (B, None)),
        f"{bb}.top_query_embedding.gather": ((None, None), (B, None)),
        f"{bb}.embedding_add": ((B, None, None), (B, None, None)),
        f"{bb}.mask_sub": ((), (B, None, None)),
        f"{bb}.mask_to_bias": ((B, None, None), ()),
        **_layer(f"{bb}.blocks.*", model), **_layernorm(f"{bb}.final_ln"), **_layer(f"{bb}.query_layer", model),
        "lm.vocab_proj": (ROW, (V if vocab_split else None, None)),  # table [V, H], transpose_b
        "lm.cast": REPLICATED,
        **_loss(vocab_parallel),
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
                   "lm.backbone.query_layer": last, "lm": last, "loss": last})
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


PLANS = {"pangu_alpha": pangu_alpha_plan}


def plan_for(model: ModelConfig, parallel: ParallelConfig, recompute: RecomputeConfig | None = None,
             *, family: str = "pangu_alpha") -> Plan:
    """The plan of model `family` (only PanGu-alpha so far) for this mesh and recompute mode."""
    return PLANS[family](model, parallel, recompute, grad_agg_layers=parallel.grad_agg_layers)
