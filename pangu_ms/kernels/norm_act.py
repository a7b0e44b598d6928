"""LayerNorm and tanh-GELU as single fused kernels, for inference graphs.

Notation: T tokens, H hidden.

The training model (`pangu_ms.models.layers`) composes LayerNorm (8 ops) and GELU (6 ops) of
plain ops because their autodiff backward is cheaper on CPU than the fused kernels' gradient
kernels (MINDSPORE_CPU_PERF.md item 5). A decoding step runs one token: there the cost is the
per-op launch (tens of microseconds on CPU, more than the arithmetic), so one `P.LayerNorm`
and one `P.GeLU` beat the compositions. Both forms compute the same function (within float
rounding, about 5e-7); `tests/kernels` compares them forward and backward.
"""
from __future__ import annotations

from mindspore import nn
from mindspore.ops import operations as P

from pangu_ms.models.layers import GELU


class LayerNormKernel(nn.Cell):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis.

    `construct(x [T, H], gamma [H], beta [H]) -> [T, H]` (fp32). The weights are inputs, so
    one kernel Cell serves every layer of a model. `fused=False` is the composition of
    `pangu_ms.models.layers.LayerNorm`.
    """

    def __init__(self, *, eps: float = 1e-5, fused: bool = True):
        super().__init__()
        self.fused = fused
        self.eps = eps
        self.layer_norm = P.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.mean = P.ReduceMean(keep_dims=True)
        self.sub = P.Sub()
        self.square = P.Mul()
        self.rsqrt = P.Rsqrt()
        self.add_eps = P.Add()
        self.normalize = P.Mul()
        self.scale = P.Mul()
        self.shift = P.Add()

    def construct(self, x, gamma, beta):
        if self.fused:
            return self.layer_norm(x, gamma, beta)[0]  # [T, H]; outputs 1, 2 are mean and rstd
        d = self.sub(x, self.mean(x, -1))  # [T, H]
        var = self.mean(self.square(d, d), -1)  # [T, 1]
        y = self.normalize(d, self.rsqrt(self.add_eps(var, self.eps)))
        return self.shift(self.scale(y, gamma), beta)


class GeluKernel(nn.Cell):
    """tanh-approximate GELU, 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi); [..] -> [..].

    `fused=True` is MindSpore's GeLU kernel (the tanh form); `fused=False` is the composition
    of `pangu_ms.models.layers.GELU`, x * sigmoid(2c (x + 0.044715 x^3)).
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
