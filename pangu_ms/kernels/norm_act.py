"""LayerNorm and tanh-GELU: the one composed definition of each, and their single fused kernels.

Notation: T tokens, H hidden.

`GELU` and `ComposedLayerNorm` are the compositions of plain ops that the training model uses
(`pangu_ms.models.layers.LayerNorm` is `ComposedLayerNorm` with its own gamma and beta; the
FFN's activation is `GELU`): on CPU their autodiff backward is cheaper than the fused kernels'
gradient kernels (MINDSPORE_CPU_PERF.md item 5). They live here, below the models, so that the
model and the kernels' reference forms are one definition. A decoding step runs one token:
there the cost is the per-op launch (tens of microseconds on CPU, more than the arithmetic),
so one `P.LayerNorm` and one `P.GeLU` beat the compositions. Both forms compute the same
function (within float rounding, about 5e-7); `tests/kernels` compares them forward and
backward.
"""
from __future__ import annotations

import math

from mindspore import nn
from mindspore.ops import operations as P

GELU_C = math.sqrt(2.0 / math.pi)
"""c of the tanh GELU, 0.5 x (1 + tanh(c (x + GELU_CUBIC x^3)))."""
GELU_CUBIC = 0.044715


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
    """tanh-approximate GELU with a `fused` switch; [..] -> [..].

    `fused=True` is MindSpore's GeLU kernel (the tanh form); `fused=False` is `GELU`, the
    training model's composition x * sigmoid(2c (x + 0.044715 x^3)).
    """

    def __init__(self, *, fused: bool = True):
        super().__init__()
        self.fused = fused
        self.gelu = P.GeLU()
        self.reference = GELU()

    def construct(self, x):
        if self.fused:
            return self.gelu(x)
        return self.reference(x)
