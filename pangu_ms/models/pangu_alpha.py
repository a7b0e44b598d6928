"""PanGu-alpha (Zeng et al. 2021, arXiv:2104.12369): a GPT-style decoder with a top query layer.

Notation: B batch, S sequence, H hidden, F ffn width, N heads, D head dim, V vocab,
L = num_layers (counting the query layer), T = B*S.

Data flow (the released 2.6B/13B ordering, one ordering for every layout):
    h = Dropout(WordEmb[x] + PosEmb[pos])                           [T, H]
    for each of the L-1 blocks:  h = h + Attn(LN1(h));  h = h + FFN(LN2(h))
    h = LN_final(h)
    query layer:  h = h + Attn(q=TopQueryEmb[pos], kv=LN1(h));  h = h + FFN(LN2(h))
    logits = h WordEmb^T                                             [T, V] (tied head)

Attention: token i sees token j iff j <= i and both lie in the same document of the packed
row: the model gets document ids [B, S] (equal within a document) and builds the mask from
them on the device, once per forward pass.

The layers with fused implementations (LayerNorm, the residual add + LayerNorm after the
attention, bias + activation, the mask and attention core, the loss) come from a kernel spec,
`pangu_ms.kernels.switch.kernel_spec(cfg.kernels, ...)`, chosen when the model is built; this
file holds the architecture only. `kernels=` overrides the spec (e.g. for another device).

For code that evaluates these equations on the model's weights (incremental decoding,
`pangu_ms.infer.kv_cache`) the model names what it reads: `PanguAlphaLM.weight_paths()` gives
every Parameter's path by role.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mindspore as ms
from mindspore import Parameter, nn
from mindspore.common.initializer import Normal, initializer
from mindspore.ops import operations as P

from pangu_ms.config import ModelConfig
from pangu_ms.kernels.reference import compute_dtype
from pangu_ms.kernels.switch import KernelSpec, kernel_spec
from pangu_ms.models.layers import Linear


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

    `construct(query_in, kv_in, mask)`: query_in, kv_in [T, H], mask (from the spec's
    `attention_mask`, its first axis B and last S) -> [T, H]. For a block both inputs are
    LN1(h); for the query layer the query input is the position-indexed top query embedding.
    """

    def __init__(self, cfg: ModelConfig, spec: KernelSpec):
        super().__init__()
        h, std, dt = cfg.hidden_size, cfg.init_std, cfg.compute_dtype
        out_std = std / math.sqrt(2.0 * cfg.num_layers)
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.linear_q = Linear(h, h, std=std, dtype=dt)
        self.linear_k = Linear(h, h, std=std, dtype=dt)
        self.linear_v = Linear(h, h, std=std, dtype=dt)
        self.linear_out = Linear(h, h, std=out_std, dtype=dt)
        self.to_heads = P.Transpose()
        self.from_heads = P.Transpose()
        self.low_precision = dt != "float32"
        self.dtype = compute_dtype(dt)
        self.cast = P.Cast()
        self.core = spec.core_attention(cfg)  # (q, k, v [B, N, S, D], mask) -> ctx [B, N, S, D] fp32
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

    def construct(self, query_in, kv_in, mask):
        batch, seq = mask.shape[0], mask.shape[-1]
        q = self.split_heads(self.linear_q(query_in), batch, seq)  # [B, N, S, D]
        k = self.split_heads(self.linear_k(kv_in), batch, seq)  # [B, N, S, D]
        v = self.split_heads(self.linear_v(kv_in), batch, seq)  # [B, N, S, D]
        out = self.linear_out(self.merge_heads(self.core(q, k, v, mask)))  # [T, H]
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class FeedForward(nn.Cell):
    """H -> F -> H with the configured activation (`model.activation`): [T, H] -> [T, H]."""

    def __init__(self, cfg: ModelConfig, spec: KernelSpec):
        super().__init__()
        out_std = cfg.init_std / math.sqrt(2.0 * cfg.num_layers)
        self.linear_fc1 = Linear(cfg.hidden_size, cfg.ffn_hidden_size, std=cfg.init_std, dtype=cfg.compute_dtype,
                                 activation=spec.bias_activation(cfg.activation))  # act(x W1 + b1)
        self.linear_fc2 = Linear(cfg.ffn_hidden_size, cfg.hidden_size, std=out_std, dtype=cfg.compute_dtype)
        self.dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else None

    def construct(self, x):
        out = self.linear_fc2(self.linear_fc1(x))  # [T, H]
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class Block(nn.Cell):
    """Pre-LayerNorm block: h + Attn(LN1(h)), then h + FFN(LN2(h)); [T, H] -> [T, H].

    `ln2` adds the attention branch to the residual stream and normalises the sum in one
    step, returning both (a fused kernel where the device has one)."""

    def __init__(self, cfg: ModelConfig, spec: KernelSpec):
        super().__init__()
        self.ln1 = spec.layer_norm(cfg.hidden_size, cfg.layernorm_eps)
        self.attention = Attention(cfg, spec)
        self.ln2 = spec.add_layer_norm(cfg.hidden_size, cfg.layernorm_eps)
        self.ffn = FeedForward(cfg, spec)
        self.residual_ffn = P.Add()

    def construct(self, h, mask):
        x = self.ln1(h)
        h, x = self.ln2(self.attention(x, x, mask), h)  # h + Attn(x), LN2 of that
        return self.residual_ffn(h, self.ffn(x))


class QueryLayer(Block):
    """The top query layer: the attention query is `query` (the top query embedding, not
    normalised); keys and values are LN1(h). [T, H] -> [T, H]."""

    def construct(self, h, query, mask):
        h, x = self.ln2(self.attention(query, self.ln1(h), mask), h)
        return self.residual_ffn(h, self.ffn(x))


class PanguAlpha(nn.Cell):
    """The backbone: ids [B, S], position ids [B, S], document ids [B, S] -> h [T, H]."""

    def __init__(self, cfg: ModelConfig, spec: KernelSpec):
        super().__init__()
        self.config = cfg
        self.word_embedding = Embedding(cfg.vocab_size, cfg.hidden_size, std=cfg.init_std)
        self.position_embedding = Embedding(cfg.seq_length, cfg.hidden_size, std=cfg.init_std)
        self.top_query_embedding = Embedding(cfg.seq_length, cfg.hidden_size, std=cfg.init_std)
        self.embedding_add = P.Add()
        self.embedding_dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else None
        self.attention_mask = spec.attention_mask(cfg)  # document ids -> the attention cores' mask
        self.blocks = nn.CellList([Block(cfg, spec) for _ in range(cfg.num_layers - 1)])
        self.final_ln = spec.layer_norm(cfg.hidden_size, cfg.layernorm_eps)
        self.query_layer = QueryLayer(cfg, spec)

    def construct(self, input_ids, position_ids, document_ids):
        b, s = input_ids.shape
        mask = self.attention_mask(document_ids)  # causal within each document, built once
        h = self.embedding_add(self.word_embedding(input_ids), self.position_embedding(position_ids))
        h = h.reshape(b * s, -1)  # [T, H]
        if self.embedding_dropout is not None:
            h = self.embedding_dropout(h)
        for block in self.blocks:
            h = block(h, mask)
        h = self.final_ln(h)
        query = self.top_query_embedding(position_ids).reshape(b * s, -1)  # [T, H]
        return self.query_layer(h, query, mask)  # [T, H]


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
    """Backbone plus the tied head: (ids, position ids, document ids [B, S]) -> logits [T, V] fp32.

    `kernels` is the kernel spec to build with (default: `cfg.kernels` on MindSpore's current
    device, the chip asked from the device); `kernel_spec` keeps the one used."""

    def __init__(self, cfg: ModelConfig, kernels: KernelSpec | None = None):
        super().__init__()
        self.config = cfg
        self.kernel_spec = kernels or kernel_spec(cfg.kernels)
        self.backbone = PanguAlpha(cfg, self.kernel_spec)
        self.vocab_proj = P.MatMul(transpose_b=True)
        self.low_precision = cfg.compute_dtype != "float32"
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.cast = P.Cast()

    def weight_paths(self) -> WeightPaths:
        """Where each weight lives, by role: what a decoder evaluating these equations reads."""
        blocks = tuple(f"backbone.blocks.{i}" for i in range(len(self.backbone.blocks)))
        return WeightPaths(model=dict(MODEL_WEIGHTS), layers=blocks + ("backbone.query_layer",),
                           layer=dict(LAYER_WEIGHTS))

    @property
    def word_table(self) -> Parameter:
        """The word-embedding table [V, H], also the output matrix."""
        return self.backbone.word_embedding.embedding_table

    def logits(self, h):
        """h [T, H] -> logits [T, V] with the word-embedding table as output matrix."""
        table = self.backbone.word_embedding.embedding_table
        if self.low_precision:
            return self.cast(self.vocab_proj(self.cast(h, self.dtype), self.cast(table, self.dtype)), ms.float32)
        return self.vocab_proj(h, table)

    def construct(self, input_ids, position_ids, document_ids):
        return self.logits(self.backbone(input_ids, position_ids, document_ids))


class PanguAlphaWithLoss(nn.Cell):
    """Training wrapper: (rows [B, S+1], position ids, document ids [B, S]) -> loss [].

    Inputs are ids[:, :-1], labels ids[:, 1:]; the loss (the spec's `lm_loss`: tied head and
    cross-entropy over non-pad labels) takes the final hidden states and the word table."""

    def __init__(self, cfg: ModelConfig, kernels: KernelSpec | None = None):
        super().__init__()
        self.config = cfg
        self.lm = PanguAlphaLM(cfg, kernels)
        self.kernel_spec = self.lm.kernel_spec
        self.loss = self.kernel_spec.lm_loss(cfg)

    def construct(self, input_ids, position_ids, document_ids):
        s = self.config.seq_length
        tokens = input_ids[:, :s]  # [B, S]
        labels = input_ids[:, 1:].reshape(-1)  # [T]
        h = self.lm.backbone(tokens, position_ids, document_ids)  # [T, H]
        return self.loss(h, self.lm.backbone.word_embedding.embedding_table, labels)


class LabelMask(nn.Cell):
    """labels [T] with every label whose flag in loss_mask [T] is 0 replaced by `pad_id`."""

    def __init__(self, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.select = P.Select()
        self.ones_like = P.OnesLike()

    def construct(self, labels, loss_mask):
        pad = self.ones_like(labels) * self.pad_id  # [T]
        return self.select(loss_mask > 0, labels, pad)  # [T]


class PanguAlphaWithMaskedLoss(PanguAlphaWithLoss):
    """`PanguAlphaWithLoss` with a fourth input, loss_mask fp32 [B, S] of 0/1 flags aligned with
    the labels ids[:, 1:] (PanGu-Coder's CODE-CLM: 1 on code tokens and `<eot>`).

    A label whose flag is 0 is scored as padding, so the loss is the mean NLL over the flagged
    labels and the others get no gradient, whichever loss cell is in place (fused, vocab-parallel).
    Same parameters and names as `PanguAlphaWithLoss`: checkpoints move between the two.
    """

    def __init__(self, cfg: ModelConfig, kernels: KernelSpec | None = None):
        super().__init__(cfg, kernels)
        self.label_mask = LabelMask(cfg.pad_id)

    def construct(self, input_ids, position_ids, document_ids, loss_mask):
        s = self.config.seq_length
        tokens = input_ids[:, :s]  # [B, S]
        labels = self.label_mask(input_ids[:, 1:].reshape(-1), loss_mask.reshape(-1))  # [T]
        h = self.lm.backbone(tokens, position_ids, document_ids)  # [T, H]
        return self.loss(h, self.lm.backbone.word_embedding.embedding_table, labels)


def count_parameters(cfg: ModelConfig) -> int:
    """Exact parameter count of `PanguAlphaLM(cfg)` from the shape alone.

    word V*H + position S*H + top query S*H + final LN 2H, and per layer (blocks and the
    query layer alike): 4 attention projections 4(H^2 + H), FFN 2HF + F + H, two LN 4H.
    """
    h, f, v, s, n_layers = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.seq_length, cfg.num_layers
    per_layer = 4 * (h * h + h) + (2 * h * f + f + h) + 4 * h
    return v * h + 2 * s * h + 2 * h + n_layers * per_layer
