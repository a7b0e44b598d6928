"""LayerNorm and the two GELUs for the decoding graphs: compositions of plain ops, and single
MindSpore kernels.

Notation: T tokens, H hidden.

The decoder (`pangu_ms.infer`) evaluates the model's equations with its own op sets. Its
prompt graph runs many tokens, where the compositions (`ComposedLayerNorm`, `GELU`,
`FastGELU`) are faster on CPU than MindSpore's LayerNorm/GeLU kernels; a decoding step runs
one token, where the cost is the per-op launch (tens of microseconds on CPU, more than the
arithmetic), so one `P.LayerNorm` and one `P.GeLU` / `P.FastGeLU` win. Both forms compute the
training model's function (its reference roles use `P.LayerNorm`, `P.GeLU`, `P.FastGeLU`:
`pangu_ms.kernels.reference`) within float rounding (about 5e-7); `tests/kernels` compares
them forward and backward.
"""
from __future__ import annotations

import math

from mindspore import nn
from mindspore.ops import operations as P

GELU_C = math.sqrt(2.0 / math.pi)
"""c of the tanh GELU, 0.5 x (1 + tanh(c (x + GELU_CUBIC x^3)))."""
GELU_CUBIC = 0.044715
FAST_GELU_C = 1.702
"""fast GELU: x * sigmoid(1.702 x) (MindSpore's FastGeLU)."""


class GELU(nn.Cell):
    """tanh-approximate GELU written as x * sigmoid(2c(x + 0.044715 x^3)), c = sqrt(2/pi): [..] -> [..].

    Identical math to 0.5x(1 + tanh(c(x + 0.044715x^3))), without the cancellation of 1 + tanh
    at negative x; composed ops run about 4x faster than the GeLU kernel and its gradient on
    CPU. The C++ `LinearBiasGelu` (kernels/cpu/gemv_avx2.cc) evaluates this same formula.
    """

    def __init__(self):
        super().__init__()
        self.c1 = 2.0 * GELU_C
        self.c3 = self.c1 * GELU_CUBIC
        self.square = P.Mul()
        self.poly = P.Mul()
        self.add = P.Add()
        self.inner = P.Mul()
        self.sigmoid = P.Sigmoid()
        self.gate = P.Mul()

    def construct(self, x):
        u = self.add(self.poly(self.square(x, x), self.c3), self.c1)  # c1 + c3 x^2
        return self.gate(x, self.sigmoid(self.inner(x, u)))


class FastGELU(nn.Cell):
    """x * sigmoid(1.702 x) composed of plain ops (MindSpore's FastGeLU, the same function): [..] -> [..]."""

    def __init__(self):
        super().__init__()
        self.inner = P.Mul()
        self.sigmoid = P.Sigmoid()
        self.gate = P.Mul()

    def construct(self, x):
        return self.gate(x, self.sigmoid(self.inner(x, FAST_GELU_C)))


class ComposedLayerNorm(nn.Cell):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis, composed of plain ops.

    `construct(x [T, H], gamma [H], beta [H]) -> [T, H]` (fp32; 2-D, where MindSpore CPU's
    reductions take their fast last-axis path). The weights are inputs, so one Cell serves every
    layer of a decoder; the model's `LayerNorm` subclasses it and passes its own.
    """

    def __init__(self, *, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.mean = P.ReduceMean(keep_dims=True)
        self.sub = P.Sub()
        self.square = P.Mul()
        self.rsqrt = P.Rsqrt()
        self.add_eps = P.Add()
        self.normalize = P.Mul()
        self.scale = P.Mul()
        self.shift = P.Add()

    def compose(self, x, gamma, beta):
        d = self.sub(x, self.mean(x, -1))  # [T, H]
        var = self.mean(self.square(d, d), -1)  # [T, 1]
        y = self.normalize(d, self.rsqrt(self.add_eps(var, self.eps)))
        return self.shift(self.scale(y, gamma), beta)

    def construct(self, x, gamma, beta):
        return self.compose(x, gamma, beta)


class LayerNormKernel(ComposedLayerNorm):
    """LayerNorm with a `fused` switch: `P.LayerNorm` (one kernel) or the composition.

    `construct(x [T, H], gamma [H], beta [H]) -> [T, H]` (fp32), as `ComposedLayerNorm`.
    """

    def __init__(self, *, eps: float = 1e-5, fused: bool = True):
        super().__init__(eps=eps)
        self.fused = fused
        self.layer_norm = P.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x, gamma, beta):
        if self.fused:
            return self.layer_norm(x, gamma, beta)[0]  # [T, H]; outputs 1, 2 are mean and rstd
        return self.compose(x, gamma, beta)


class GeluKernel(nn.Cell):
    """The model's activation with a `fused` switch; [..] -> [..].

    `kind` "gelu": `fused=True` is MindSpore's GeLU kernel (the tanh form), `fused=False` the
    composition `GELU`, x * sigmoid(2c (x + 0.044715 x^3)). "fast_gelu": FastGeLU or `FastGELU`.
    """

    def __init__(self, *, fused: bool = True, kind: str = "gelu"):
        super().__init__()
        self.fused = fused
        self.kind = kind
        self.gelu = P.GeLU() if kind == "gelu" else P.FastGeLU()
        self.reference = GELU() if kind == "gelu" else FastGELU()

    def construct(self, x):
        if self.fused:
            return self.gelu(x)
        return self.reference(x)
