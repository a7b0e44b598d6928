"""The reference implementations of the training model's fused roles: plain MindSpore ops.

Notation: B batch, S sequence, T = B*S tokens, H hidden, F ffn width, N heads, D head dim, V vocab.

Each class is one role of `pangu_ms.kernels.switch.KernelSpec` (LayerNorm, residual add +
LayerNorm, bias + activation, the attention mask and core, the LM loss) written with one named
primitive per operation, so a parallel plan addresses them by path (`ln1.layer_norm`,
`attention.core.qk_matmul`, ...). They are the model's math: the fused kernels of every device
are tested against them. No speed tricks here (no composed LayerNorm, no hand-written
backward): on CPU the fused C++ kernels are the fast path.

Precision: LayerNorm statistics, the mask, the softmax and the loss are fp32 whatever the
compute dtype; only the matmul inputs are cast (fp16 on 910A, bf16 on 910B).
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import One, Zero, initializer
from mindspore.ops import operations as P

from pangu_ms.kernels.attention import MASK_VALUE

COMPUTE_DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


def compute_dtype(name: str) -> ms.dtype.Type:
    """MindSpore dtype for a `ModelConfig.compute_dtype` name."""
    return COMPUTE_DTYPES[name]


class _NormParams(nn.Cell):
    """The gain `gamma` [H] (ones) and shift `beta` [H] (zeros) every LayerNorm form holds."""

    param_consumers: dict[str, tuple[str, int]] = {"gamma": ("layer_norm", 1), "beta": ("layer_norm", 2)}
    """parameter -> (primitive attribute consuming it, input index): its layout under a plan."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.gamma = Parameter(initializer(One(), (hidden,), ms.float32), name="gamma")
        self.beta = Parameter(initializer(Zero(), (hidden,), ms.float32), name="beta")


class LayerNorm(_NormParams):
    """LayerNorm over the last axis, fp32: x [T, H] -> [T, H] (`P.LayerNorm`)."""

    def __init__(self, hidden: int, *, eps: float = 1e-5):
        super().__init__(hidden, eps)
        self.layer_norm = P.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        return self.layer_norm(x, self.gamma, self.beta)[0]  # outputs 1, 2: mean and rstd


class AddLayerNorm(_NormParams):
    """Residual add, then LayerNorm: (x [T, H], residual [T, H] fp32) -> (s = residual + x, LN(s)), fp32."""

    def __init__(self, hidden: int, *, eps: float = 1e-5):
        super().__init__(hidden, eps)
        self.residual_add = P.Add()
        self.layer_norm = P.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x, residual):
        s = self.residual_add(residual, x)  # [T, H]
        return s, self.layer_norm(s, self.gamma, self.beta)[0]


ACTIVATIONS = ("gelu", "fast_gelu")


class BiasActivation(nn.Cell):
    """act(z + bias): z [T, F], bias [F] -> [T, F]; act is MindSpore's GeLU (tanh form) or
    FastGeLU (x * sigmoid(1.702 x)). The bias is the owning Linear's (`bias_input` says which
    input of which primitive takes it)."""

    bias_input: tuple[str, int] = ("bias_add", 1)

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"activation {kind!r}: use one of {ACTIVATIONS}")
        self.kind = kind
        self.bias_add = P.Add()
        self.act = P.GeLU() if kind == "gelu" else P.FastGeLU()

    def construct(self, z, bias):
        return self.act(self.bias_add(z, bias))


class SameDocument(nn.Cell):
    """The masking rule: token i may see token j iff j <= i and both are in the same document.

    `allowed(document_ids [B, S] int32) -> bool [B, 1, S, S]` (ids need only be equal within a
    document: any numbering). Subclasses turn it into what their attention core consumes; it
    is built on the device once per forward pass and shared by every layer.
    """

    def __init__(self):
        super().__init__()
        self.same_doc = P.Equal()
        self.causal = P.LessEqual()
        self.both = P.LogicalAnd()
        self.cast = P.Cast()

    def allowed(self, document_ids):
        b, s = document_ids.shape
        idx = ops.arange(s, dtype=ms.int32)
        causal = self.causal(idx.reshape(1, s), idx.reshape(s, 1))  # [S, S]: j <= i
        same = self.same_doc(document_ids.reshape(b, 1, s, 1), document_ids.reshape(b, 1, 1, s))  # [B, 1, S, S]
        return self.both(same, causal)


class DocumentMask(SameDocument):
    """Document ids [B, S] int32 -> additive attention bias [B, 1, S, S] fp32: 0 where token i
    may see token j (`SameDocument`), `MASK_VALUE` elsewhere."""

    def __init__(self):
        super().__init__()
        self.mask_sub = P.Sub()
        self.mask_to_bias = P.Mul()

    def construct(self, document_ids):
        allowed = self.cast(self.allowed(document_ids), ms.float32)
        return self.mask_to_bias(self.mask_sub(1.0, allowed), MASK_VALUE)  # [B, 1, S, S]


class CoreAttention(nn.Cell):
    """softmax(q k^T / sqrt(D) + bias) v per head.

    `construct(q, k, v [B, N, S, D] in the compute dtype (q not scaled), bias [B, 1, Q, K] fp32)`
    -> ctx [B, N, Q, D] fp32. Scores, bias and softmax are fp32 (an fp16 softmax caused loss
    spikes upstream); q is scaled before the product (q is smaller than the scores).
    """

    def __init__(self, head_dim: int, *, dropout: float = 0.0, dtype: str = "float32"):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)
        self.scale_q = P.Mul()
        self.qk_matmul = P.BatchMatMul(transpose_b=True)
        self.pv_matmul = P.BatchMatMul()
        self.add_bias = P.Add()
        self.softmax = P.Softmax(-1)
        self.cast = P.Cast()
        self.low_precision = dtype != "float32"
        self.dtype = compute_dtype(dtype)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None

    def construct(self, q, k, v, bias):
        scores = self.qk_matmul(self.scale_q(q, self.scale), k)  # [B, N, Q, K]
        if self.low_precision:
            scores = self.cast(scores, ms.float32)
        p = self.softmax(self.add_bias(scores, bias))  # [B, N, Q, K] fp32
        if self.dropout is not None:
            p = self.dropout(p)
        if self.low_precision:
            p = self.cast(p, self.dtype)
        ctx = self.pv_matmul(p, v)  # [B, N, Q, D]
        if self.low_precision:
            ctx = self.cast(ctx, ms.float32)
        return ctx


class TiedHead(nn.Cell):
    """logits = h table^T: h [T, H] fp32, table [V, H] -> [T, V] fp32 (matmul in the compute dtype)."""

    def __init__(self, dtype: str = "float32"):
        super().__init__()
        self.vocab_proj = P.MatMul(transpose_b=True)
        self.cast = P.Cast()
        self.low_precision = dtype != "float32"
        self.dtype = compute_dtype(dtype)

    def construct(self, h, table):
        if self.low_precision:
            return self.cast(self.vocab_proj(self.cast(h, self.dtype), self.cast(table, self.dtype)), ms.float32)
        return self.vocab_proj(h, table)


class TiedHeadCrossEntropy(nn.Cell):
    """The LM loss: mean next-token NLL over labels that are not `pad_id`.

    `construct(h [T, H], table [V, H], labels [T] int32) -> loss []` fp32: logits from the tied
    head (`TiedHead`), fp32 log-softmax, the label's log-probability gathered (autodiff backward).
    """

    def __init__(self, pad_id: int, dtype: str = "float32"):
        super().__init__()
        self.pad_id = pad_id
        self.head = TiedHead(dtype)
        self.log_softmax = P.LogSoftmax(-1)
        self.gather = P.GatherD()
        self.not_pad = P.NotEqual()
        self.cast = P.Cast()

    def token_weights(self, labels):
        """labels [T] -> w_t / sum(w) [T] (0 on padding)."""
        w = self.cast(self.not_pad(labels, self.pad_id), ms.float32)  # [T]
        return w / w.sum().clip(1.0, None)

    def construct(self, h, table, labels):
        logp = self.log_softmax(self.head(h, table))  # [T, V] fp32
        nll = -self.gather(logp, 1, labels.reshape(-1, 1)).reshape(-1)  # [T]
        return (nll * self.token_weights(labels)).sum()


class VocabParallelCrossEntropy(nn.Cell):
    """`TiedHeadCrossEntropy` with its softmax composed of named reductions a shard plan can
    split over the vocabulary axis (`pangu_ms.parallel.parallelize` puts it in place of the
    loss when logits are vocab-parallel). Same inputs and output."""

    def __init__(self, pad_id: int, vocab_size: int, dtype: str = "float32"):
        super().__init__()
        self.pad_id = pad_id
        self.head = TiedHead(dtype)
        self.max = P.ReduceMax(keep_dims=True)
        self.sub = P.Sub()
        self.exp = P.Exp()
        self.sum = P.ReduceSum(keep_dims=True)
        self.log = P.Log()
        self.log_sub = P.Sub()
        # the label's log-probability as a one-hot dot product: each vocab shard contributes
        # its part and the sum all-reduces, where a gather along the split axis would first
        # collect the whole [T, V] log-probabilities on every device
        self.vocab_size = vocab_size
        self.one_hot = P.OneHot()
        self.pick = P.Mul()
        self.label_sum = P.ReduceSum()
        self.not_pad = P.NotEqual()
        self.cast = P.Cast()

    def construct(self, h, table, labels):
        logits = self.head(h, table)  # [T, V] fp32
        shifted = self.sub(logits, ops.stop_gradient(self.max(logits, -1)))  # [T, V]
        logp = self.log_sub(shifted, self.log(self.sum(self.exp(shifted), -1)))  # [T, V]
        hot = self.one_hot(labels, self.vocab_size, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
        nll = -self.label_sum(self.pick(logp, hot), -1)  # [T]
        w = self.cast(self.not_pad(labels, self.pad_id), ms.float32)  # [T]
        return (nll * w).sum() / w.sum().clip(1.0, None)
