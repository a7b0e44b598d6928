"""PanGu-alpha (Zeng et al. 2021, arXiv:2104.12369): a GPT-style decoder with a top query layer.

Notation: B batch, S sequence, H hidden, F ffn width, N heads, D head dim, V vocab,
L = num_layers (counting the query layer), T = B*S.

Data flow (the released 2.6B/13B ordering, one ordering for every layout):
    h = Dropout(WordEmb[x] + PosEmb[pos])                           [T, H]
    for each of the L-1 blocks:  h = h + Attn(LN1(h));  h = h + FFN(LN2(h))
    h = LN_final(h)
    query layer:  h = h + Attn(q=TopQueryEmb[pos], kv=LN1(h));  h = h + FFN(LN2(h))
    logits = h WordEmb^T                                             [T, V] (tied head)

The attention bias blocks future positions and, with end-of-document resets, positions in
earlier documents of a packed row (it comes from the data pipeline as `attention_mask`).

For code that evaluates these equations on the model's weights (incremental decoding,
`pangu_ms.infer.kv_cache`) the model names what it reads: `PanguAlphaLM.weight_paths()` gives
every Parameter's path by role, and `mask_bias` / `MASK_VALUE` are the masking rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer
from mindspore.ops import operations as P

from pangu_ms.config import ModelConfig
from pangu_ms.kernels.attention import MASK_VALUE, mask_bias  # noqa: F401 (the masking rule, exported)
from pangu_ms.kernels.norm_act import GELU
from pangu_ms.models.layers import CoreAttention, FastCoreAttention, LayerNorm, Linear, compute_dtype


class Embedding(nn.Cell):
    """Lookup table: ids [B, S] -> vectors [B, S, H]."""

    def __init__(self, rows: int, dim: int, *, std: float):
        super().__init__()
        self.embedding_table = Parameter(initializer(Normal(sigma=std), (rows, dim), ms.float32),
                                         name="embedding_table")
        self.gather = P.Gather()

    def construct(self, ids):
        return self.gather(self.embedding_table, ids, 0)


class Attention(nn.Cell):
    """Multi-head attention with separate Q, K, V projections (biases included).

    `construct(query_in, kv_in, bias)`: query_in, kv_in [T, H], bias [B, 1, S, S] -> [T, H].
    For a block both inputs are LN1(h); for the query layer the query input is the
    position-indexed top query embedding.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, std, dt = cfg.hidden_size, cfg.init_std, cfg.compute_dtype
        out_std = std / math.sqrt(2.0 * cfg.num_layers)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.linear_q = Linear(h, h, std=std, dtype=dt)
        self.linear_k = Linear(h, h, std=std, dtype=dt)
        self.linear_v = Linear(h, h, std=std, dtype=dt)
        self.linear_out = Linear(h, h, std=out_std, dtype=dt)
        self.scale_q = P.Mul()
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.to_heads = P.Transpose()
        self.from_heads = P.Transpose()
        self.low_precision = dt != "float32"
        self.dtype = compute_dtype(dt)
        self.cast = P.Cast()
        # the hand-written backward has no probability dropout and is fp32 only
        if cfg.dropout == 0.0 and not self.low_precision:
            self.core = FastCoreAttention()
        else:
            self.core = CoreAttention(dropout=cfg.dropout, dtype=dt)
        self.dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else None

    def split_heads(self, x, batch: int, seq: int):
        """[T, H] -> [B, N, S, D] in the compute dtype."""
        if self.low_precision:
            x = self.cast(x, self.dtype)
        x = x.reshape(batch, seq, self.num_heads, self.head_dim)  # [B, S, N, D]
        return self.to_heads(x, (0, 2, 1, 3))  # [B, N, S, D]

    def merge_heads(self, ctx):
        """[B, N, S, D] -> [T, H]."""
        b, n, s, d = ctx.shape
        ctx = self.from_heads(ctx, (0, 2, 1, 3))  # [B, S, N, D]
        return ctx.reshape(b * s, n * d)  # [T, H]

    def construct(self, query_in, kv_in, bias):
        batch, seq = bias.shape[0], bias.shape[-1]
        q = self.scale_q(self.linear_q(query_in), self.scale)  # [T, H], pre-scaled by 1/sqrt(D)
        q = self.split_heads(q, batch, seq)  # [B, N, S, D]
        k = self.split_heads(self.linear_k(kv_in), batch, seq)  # [B, N, S, D]
        v = self.split_heads(self.linear_v(kv_in), batch, seq)  # [B, N, S, D]
        ctx, _ = self.core(q, k, v, bias)  # [B, N, S, D]
        out = self.linear_out(self.merge_heads(ctx))  # [T, H]
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class FeedForward(nn.Cell):
    """H -> F -> H with tanh-GELU: [T, H] -> [T, H]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        out_std = cfg.init_std / math.sqrt(2.0 * cfg.num_layers)
        self.linear_fc1 = Linear(cfg.hidden_size, cfg.ffn_hidden_size, std=cfg.init_std, dtype=cfg.compute_dtype)
        self.activation = GELU()
        self.linear_fc2 = Linear(cfg.ffn_hidden_size, cfg.hidden_size, std=out_std, dtype=cfg.compute_dtype)
        self.dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else None

    def construct(self, x):
        out = self.linear_fc2(self.activation(self.linear_fc1(x)))  # [T, H]
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class Block(nn.Cell):
    """Pre-LayerNorm block: h + Attn(LN1(h)), then h + FFN(LN2(h)); [T, H] -> [T, H]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.attention = Attention(cfg)
        self.ln2 = LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.ffn = FeedForward(cfg)
        self.residual_attn = P.Add()
        self.residual_ffn = P.Add()

    def construct(self, h, bias):
        x = self.ln1(h)
        h = self.residual_attn(h, self.attention(x, x, bias))
        return self.residual_ffn(h, self.ffn(self.ln2(h)))


class QueryLayer(Block):
    """The top query layer: the attention query is `query` (the top query embedding, not
    normalised); keys and values are LN1(h). [T, H] -> [T, H]."""

    def construct(self, h, query, bias):
        h = self.residual_attn(h, self.attention(query, self.ln1(h), bias))
        return self.residual_ffn(h, self.ffn(self.ln2(h)))


class PanguAlpha(nn.Cell):
    """The backbone: ids [B, S], position ids [B, S], attention mask [B, S, S] -> h [T, H]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.word_embedding = Embedding(cfg.vocab_size, cfg.hidden_size, std=cfg.init_std)
        self.position_embedding = Embedding(cfg.seq_length, cfg.hidden_size, std=cfg.init_std)
        self.top_query_embedding = Embedding(cfg.seq_length, cfg.hidden_size, std=cfg.init_std)
        self.embedding_add = P.Add()
        self.embedding_dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else None
        self.blocks = nn.CellList([Block(cfg) for _ in range(cfg.num_layers - 1)])
        self.final_ln = LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.query_layer = QueryLayer(cfg)
        self.mask_to_bias = P.Mul()
        self.mask_sub = P.Sub()

    def attention_bias(self, attention_mask):
        """mask [B, S, S] (1 attend, 0 blocked) -> additive bias [B, 1, S, S] in fp32: 0 where
        attended, `MASK_VALUE` (-1e4) where blocked (`mask_bias`, the rule decoding uses too)."""
        b, s, _ = attention_mask.shape
        return mask_bias(attention_mask, self.mask_sub, self.mask_to_bias).reshape(b, 1, s, s)

    def construct(self, input_ids, position_ids, attention_mask):
        b, s = input_ids.shape
        bias = self.attention_bias(attention_mask)  # [B, 1, S, S]
        h = self.embedding_add(self.word_embedding(input_ids), self.position_embedding(position_ids))
        h = h.reshape(b * s, -1)  # [T, H]
        if self.embedding_dropout is not None:
            h = self.embedding_dropout(h)
        for block in self.blocks:
            h = block(h, bias)
        h = self.final_ln(h)
        query = self.top_query_embedding(position_ids).reshape(b * s, -1)  # [T, H]
        return self.query_layer(h, query, bias)  # [T, H]


LAYER_WEIGHTS: dict[str, str] = {
    "ln1_gamma": "ln1.gamma", "ln1_beta": "ln1.beta",
    "wq": "attention.linear_q.weight", "bq": "attention.linear_q.bias",
    "wk": "attention.linear_k.weight", "bk": "attention.linear_k.bias",
    "wv": "attention.linear_v.weight", "bv": "attention.linear_v.bias",
    "wo": "attention.linear_out.weight", "bo": "attention.linear_out.bias",
    "ln2_gamma": "ln2.gamma", "ln2_beta": "ln2.beta",
    "w1": "ffn.linear_fc1.weight", "b1": "ffn.linear_fc1.bias",
    "w2": "ffn.linear_fc2.weight", "b2": "ffn.linear_fc2.bias",
}
"""Role -> Parameter path inside a `Block` (the `QueryLayer` has the same); weights are [in, out]."""

MODEL_WEIGHTS: dict[str, str] = {
    "word_table": "backbone.word_embedding.embedding_table",  # [V, H], also the tied head
    "position_table": "backbone.position_embedding.embedding_table",  # [S, H]
    "top_query_table": "backbone.top_query_embedding.embedding_table",  # [S, H]
    "final_ln_gamma": "backbone.final_ln.gamma",
    "final_ln_beta": "backbone.final_ln.beta",
}
"""Role -> path in `PanguAlphaLM` of the weights outside the layers."""


@dataclass(frozen=True)
class WeightPaths:
    """Every Parameter of a `PanguAlphaLM` by role, as its path in `lm.parameters_and_names()`."""

    model: dict[str, str]
    """role -> path of the embeddings and the final LayerNorm (`MODEL_WEIGHTS`)."""
    layers: tuple[str, ...]
    """path of each layer: the blocks in order, then the query layer."""
    layer: dict[str, str]
    """role -> path inside a layer (`LAYER_WEIGHTS`), the same for every layer."""


class PanguAlphaLM(nn.Cell):
    """Backbone plus the tied head: -> logits [T, V] in fp32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.backbone = PanguAlpha(cfg)
        self.vocab_proj = P.MatMul(transpose_b=True)
        self.low_precision = cfg.compute_dtype != "float32"
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.cast = P.Cast()

    def weight_paths(self) -> WeightPaths:
        """Where each weight lives, by role: what a decoder evaluating these equations reads."""
        blocks = tuple(f"backbone.blocks.{i}" for i in range(len(self.backbone.blocks)))
        return WeightPaths(model=dict(MODEL_WEIGHTS), layers=blocks + ("backbone.query_layer",),
                           layer=dict(LAYER_WEIGHTS))

    def logits(self, h):
        """h [T, H] -> logits [T, V] with the word-embedding table as output matrix."""
        table = self.backbone.word_embedding.embedding_table
        if self.low_precision:
            return self.cast(self.vocab_proj(self.cast(h, self.dtype), self.cast(table, self.dtype)), ms.float32)
        return self.vocab_proj(h, table)

    def construct(self, input_ids, position_ids, attention_mask):
        return self.logits(self.backbone(input_ids, position_ids, attention_mask))


class CrossEntropy(nn.Cell):
    """Mean next-token loss over labels that are not `pad_id`: logits [T, V], labels [T] -> [].

    Forward: fp32 log-softmax and a gather of the label's log-probability. Backward is
    written out: d logits = (softmax - onehot(label)) * w_t / sum(w), computed by the fused
    sparse softmax-cross-entropy gradient kernel (on CPU about 6x cheaper than the
    LogSoftmax gradient). Tests compare it with autodiff of `VocabParallelCrossEntropy`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.log_softmax = P.LogSoftmax(-1)
        self.gather = P.GatherD()
        self.not_pad = P.NotEqual()
        self.cast = P.Cast()
        self.softmax_minus_onehot = P.SparseSoftmaxCrossEntropyWithLogits(is_grad=True)
        self.zeros_like = P.ZerosLike()

    def weights(self, labels):
        """labels [T] -> per-token weights w_t / sum(w) [T] (0 on padding)."""
        w = self.cast(self.not_pad(labels, self.pad_id), ms.float32)  # [T]
        return w / w.sum().clip(1.0, None)

    def construct(self, logits, labels):
        logp = self.log_softmax(logits)  # [T, V]
        nll = -self.gather(logp, 1, labels.reshape(-1, 1)).reshape(-1)  # [T]
        return (nll * self.weights(labels)).sum()

    def bprop(self, logits, labels, out, dout):
        t = logits.shape[0]
        grad = self.softmax_minus_onehot(logits, labels)  # [T, V], (softmax - onehot) / T
        scale = (self.weights(labels) * (t * dout)).reshape(-1, 1)  # [T, 1]
        return grad * scale, self.zeros_like(labels)


class VocabParallelCrossEntropy(nn.Cell):
    """The same loss as `CrossEntropy`, composed of named reductions a shard plan can split
    over the vocabulary axis (autodiff backward). `pangu_ms.parallel.parallelize` puts it in
    place of `CrossEntropy` when logits are vocab-parallel."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.max = P.ReduceMax(keep_dims=True)
        self.sub = P.Sub()
        self.exp = P.Exp()
        self.sum = P.ReduceSum(keep_dims=True)
        self.log = P.Log()
        self.log_sub = P.Sub()
        # the label's log-probability as a one-hot dot product: each vocab shard contributes
        # its part and the sum all-reduces, where a gather along the split axis would first
        # collect the whole [T, V] log-probabilities on every device
        self.vocab_size = cfg.vocab_size
        self.one_hot = P.OneHot()
        self.pick = P.Mul()
        self.label_sum = P.ReduceSum()
        self.not_pad = P.NotEqual()
        self.cast = P.Cast()

    def construct(self, logits, labels):
        shifted = self.sub(logits, ops.stop_gradient(self.max(logits, -1)))  # [T, V]
        logp = self.log_sub(shifted, self.log(self.sum(self.exp(shifted), -1)))  # [T, V]
        hot = self.one_hot(labels, self.vocab_size, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
        nll = -self.label_sum(self.pick(logp, hot), -1)  # [T]
        w = self.cast(self.not_pad(labels, self.pad_id), ms.float32)  # [T]
        return (nll * w).sum() / w.sum().clip(1.0, None)


class PanguAlphaWithLoss(nn.Cell):
    """Training wrapper: rows [B, S+1] -> loss, inputs ids[:, :-1], labels ids[:, 1:]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.lm = PanguAlphaLM(cfg)
        self.loss = CrossEntropy(cfg)

    def construct(self, input_ids, position_ids, attention_mask):
        s = self.config.seq_length
        tokens = input_ids[:, :s]  # [B, S]
        labels = input_ids[:, 1:].reshape(-1)  # [T]
        logits = self.lm(tokens, position_ids, attention_mask)  # [T, V]
        return self.loss(logits, labels)


class PanguAlphaWithMaskedLoss(PanguAlphaWithLoss):
    """`PanguAlphaWithLoss` with a fourth input, loss_mask fp32 [B, S] of 0/1 flags aligned with
    the labels ids[:, 1:] (PanGu-Coder's CODE-CLM: 1 on code tokens and `<eot>`).

    A label whose flag is 0 is scored as padding, so the loss is the mean NLL over the flagged
    labels and the others get no gradient, whichever loss cell is in place (fused, vocab-parallel).
    Same parameters and names as `PanguAlphaWithLoss`: checkpoints move between the two.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.select = P.Select()

    def construct(self, input_ids, position_ids, attention_mask, loss_mask):
        s = self.config.seq_length
        tokens = input_ids[:, :s]  # [B, S]
        labels = input_ids[:, 1:].reshape(-1)  # [T]
        pad = ops.ones_like(labels) * self.config.pad_id  # [T]
        labels = self.select(loss_mask.reshape(-1) > 0, labels, pad)  # [T]: unflagged labels -> pad
        logits = self.lm(tokens, position_ids, attention_mask)  # [T, V]
        return self.loss(logits, labels)


def count_parameters(cfg: ModelConfig) -> int:
    """Exact parameter count of `PanguAlphaLM(cfg)` from the shape alone.

    word V*H + position S*H + top query S*H + final LN 2H, and per layer (blocks and the
    query layer alike): 4 attention projections 4(H^2 + H), FFN 2HF + F + H, two LN 4H.
    """
    h, f, v, s, n_layers = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.seq_length, cfg.num_layers
    per_layer = 4 * (h * h + h) + (2 * h * f + f + h) + 4 * h
    return v * h + 2 * s * h + 2 * h + n_layers * per_layer
