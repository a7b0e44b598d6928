"""The linear layer shared by the PanGu models.

Notation: T = B*S tokens (activations stay 2-D [T, H] between layers), H hidden, F ffn width.

Every primitive a parallel plan may shard is a named attribute created in `__init__`
(`matmul`, `bias_add`), so `pangu_ms.parallel` can address it by path. The other layers the
model needs (LayerNorm, the attention core, the activation, the loss) come from the kernel
spec it is built with (`pangu_ms.kernels.switch`).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn
from mindspore.common.initializer import Normal, Zero, initializer
from mindspore.ops import operations as P

from pangu_ms.kernels.reference import compute_dtype


class Linear(nn.Cell):
    """y = x W + b with W stored [in, out]: [T, in] -> [T, out] fp32.

    With a low-precision `dtype` (float16, bfloat16) the matmul runs in it and the result is
    cast back to fp32, so residual adds and LayerNorm stay fp32. With `activation` (a
    bias-activation Cell of the kernel spec) the output is act(x W + b), the bias added by it.
    """

    def __init__(self, in_dim: int, out_dim: int, *, std: float, dtype: str = "float32",
                 activation: nn.Cell | None = None):
        super().__init__()
        self.weight = Parameter(initializer(Normal(sigma=std), (in_dim, out_dim), ms.float32), name="weight")
        self.bias = Parameter(initializer(Zero(), (out_dim,), ms.float32), name="bias")
        self.matmul = P.MatMul()
        self.activation = activation
        if activation is None:
            self.bias_add = P.Add()
        else:  # the bias is an input of the activation's op: its layout follows that op
            op, index = activation.bias_input
            self.param_consumers = {"weight": ("matmul", 1), "bias": (f"activation.{op}", index)}
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
        if self.activation is not None:
            return self.activation(y, self.bias)
        return self.bias_add(y, self.bias)
