"""Building blocks shared by the PanGu models: Linear, LayerNorm, attention core.

Notation: T = B*S tokens (activations stay 2-D [T, H] between layers: composed reductions
and bias gradients take MindSpore CPU's fast last-axis path only on 2-D tensors, see
shared/MINDSPORE_CPU_PERF.md), H hidden, F ffn width, N heads, D head dim.

Every primitive a parallel plan may shard is a named attribute created in `__init__`
(`matmul`, `bias_add`, `qk_matmul`, ...), so `pangu_ms.parallel` can address it by path.
The GELU and LayerNorm compositions are defined once, in `pangu_ms.kernels.norm_act`, which
the decoding kernels' reference forms use too (kernels sit below the models).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn
from mindspore.common.initializer import Normal, One, Zero, initializer
from mindspore.ops import operations as P

from pangu_ms.kernels.norm_act import ComposedLayerNorm

_DTYPES = {"float32": ms.float32, "float16": ms.float16}


def compute_dtype(name: str) -> ms.dtype.Type:
    """MindSpore dtype for a `ModelConfig.compute_dtype` name."""
    return _DTYPES[name]


class Linear(nn.Cell):
    """y = x W + b with W stored [in, out]; input and output [T, in] -> [T, out] in fp32.

    With `dtype=float16` the matmul runs in fp16 and the result is cast back to fp32, so
    residual adds and LayerNorm stay fp32.
    """

    def __init__(self, in_dim: int, out_dim: int, *, std: float, dtype: str = "float32", bias: bool = True):
        super().__init__()
        self.weight = Parameter(initializer(Normal(sigma=std), (in_dim, out_dim), ms.float32), name="weight")
        self.bias = Parameter(initializer(Zero(), (out_dim,), ms.float32), name="bias") if bias else None
        self.matmul = P.MatMul()
        self.bias_add = P.Add()
        self.low_precision = dtype != "float32"
        self.dtype = compute_dtype(dtype)
        self.cast = P.Cast()

    def construct(self, x):
        w = self.weight
        if self.low_precision:
            x = self.cast(x, self.dtype)
            w = self.cast(w, self.dtype)
        y = self.matmul(x, w)  # [T, out]
        if self.low_precision:
            y = self.cast(y, ms.float32)
        if self.bias is not None:
            y = self.bias_add(y, self.bias)
        return y


class LayerNorm(ComposedLayerNorm):
    """LayerNorm over the last axis of a 2-D [T, H] input, in fp32, composed of plain ops, with
    its gain `gamma` and shift `beta`: `pangu_ms.kernels.norm_act.ComposedLayerNorm`, the one
    definition the decoding kernels' reference form uses too.

    Composed rather than `P.LayerNorm`: on CPU the LayerNormGrad kernel costs about 6 ms a
    call, the composition's autodiff a fraction of that (MINDSPORE_CPU_PERF.md item 5).
    """

    def __init__(self, hidden: int, *, eps: float = 1e-5):
        super().__init__(eps=eps)
        self.gamma = Parameter(initializer(One(), (hidden,), ms.float32), name="gamma")
        self.beta = Parameter(initializer(Zero(), (hidden,), ms.float32), name="beta")

    def construct(self, x):
        return self.compose(x, self.gamma, self.beta)  # [T, H]


class CoreAttention(nn.Cell):
    """softmax(q k^T + bias) v per head; q is pre-scaled by 1/sqrt(D).

    Inputs q, k, v [B, N, S, D] (compute dtype), bias [B, 1, S, S] fp32 (0 allowed, -1e4
    blocked). Returns the context [B, N, S, D] in fp32 and the probabilities [B, N, S, S].
    Scores, mask and softmax are fp32 (fp16 softmax caused loss spikes upstream).
    """

    def __init__(self, *, dropout: float = 0.0, dtype: str = "float32"):
        super().__init__()
        self.qk_matmul = P.BatchMatMul(transpose_b=True)
        self.pv_matmul = P.BatchMatMul()
        self.add_bias = P.Add()
        self.softmax = P.Softmax(-1)
        self.cast = P.Cast()
        self.low_precision = dtype != "float32"
        self.dtype = compute_dtype(dtype)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None

    def construct(self, q, k, v, bias):
        scores = self.qk_matmul(q, k)  # [B, N, S, S]
        if self.low_precision:
            scores = self.cast(scores, ms.float32)
        probs = self.softmax(self.add_bias(scores, bias))  # [B, N, S, S] fp32
        p = probs
        if self.dropout is not None:
            p = self.dropout(p)
        if self.low_precision:
            p = self.cast(p, self.dtype)
        ctx = self.pv_matmul(p, v)  # [B, N, S, D]
        if self.low_precision:
            ctx = self.cast(ctx, ms.float32)
        return ctx, probs


class FastCoreAttention(CoreAttention):
    """CoreAttention (no dropout, fp32) with a hand-written backward.

    dS = P * (dO V^T - rowsum(dO * O)) avoids the 4-D softmax-gradient reduction and its
    transposes (MINDSPORE_CPU_PERF.md item 4: +10% per training step on CPU). Gradients are
    exactly those of autodiff; tests compare both.
    """

    def __init__(self):
        super().__init__(dropout=0.0, dtype="float32")
        self.do_v = P.BatchMatMul(transpose_b=True)
        self.ds_k = P.BatchMatMul()
        self.ds_q = P.BatchMatMul(transpose_a=True)
        self.p_do = P.BatchMatMul(transpose_a=True)
        self.row_sum = P.ReduceSum(keep_dims=True)
        self.zeros_like = P.ZerosLike()

    def bprop(self, q, k, v, bias, out, dout):
        ctx, probs = out
        d_ctx = dout[0]  # [B, N, S, D]; probs are not differentiated through
        delta = self.row_sum(d_ctx * ctx, -1)  # [B, N, S, 1]
        d_scores = probs * (self.do_v(d_ctx, v) - delta)  # [B, N, S, S]
        return (self.ds_k(d_scores, k), self.ds_q(d_scores, q), self.p_do(probs, d_ctx), self.zeros_like(bias))
