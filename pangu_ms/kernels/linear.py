"""Matrix-vector kernels for single-token decoding: Linear (x W + b, optionally followed by
GELU or a residual add) and the tied head (x T^T).

Notation: T rows (tokens; 1..B at a decoding step), K in, N out, H hidden, V vocab.

At one token per step each weight matmul is a matrix-vector product, and MindSpore's CPU
MatMul spends much of it packing the weight operand (tiny model, one core: 63 us for a
256x256 product plus 9 us for the bias add, against 27 us for the kernel here, which streams
each weight row once and adds the bias in the same pass; 8000x256 head: 0.9 ms against
0.6 ms). The kernels are C++ with AVX2/FMA intrinsics (`kernels/cpu/gemv_avx2.cc`), compiled
with g++ on first use into the user's cache (`pangu_ms.kernels.build`) and run as
`ops.Custom(func_type="aot")` operators, single-threaded.

Each kernel Cell has the reference composition (MatMul, Add, the composed GELU) and a `fused`
switch; with `fused=True` it uses the C++ kernel when it can be built (x86-64 with AVX2 and
FMA, g++ on PATH, the source present) and otherwise falls back to the reference, logging why
once. `cell.fused` tells which one runs. Backward passes are written with MindSpore ops
(`bprop`), so the fused forms are differentiable; tests compare fused and reference both ways.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.ops import operations as P

from pangu_ms.kernels.build import cpu_kernel_library
from pangu_ms.kernels.norm_act import GELU, GELU_C, GELU_CUBIC

_MATMUL_NT = P.MatMul(transpose_b=True)
_MATMUL_TN = P.MatMul(transpose_a=True)
_MATMUL = P.MatMul()
_SUM_ROWS = P.ReduceSum(keep_dims=False)


def _linear_bprop(x, w, b, out, dout):
    """d x = dy W^T, d W = x^T dy, d b = column sums of dy."""
    return _MATMUL_NT(dout, w), _MATMUL_TN(x, dout), _SUM_ROWS(dout, 0)


def _linear_residual_bprop(x, w, b, residual, out, dout):
    """As `_linear_bprop`, and d residual = dy."""
    return _MATMUL_NT(dout, w), _MATMUL_TN(x, dout), _SUM_ROWS(dout, 0), dout


def _gelu_grad(z):
    """d/dz of z s(z), s = sigmoid(2u), u = c (z + 0.044715 z^3) (the tanh GELU written with the
    sigmoid, as `norm_act.GELU`): s + 2 z s (1 - s) u'. Sigmoid, not 1 - tanh^2, which cancels."""
    s = ops.sigmoid(2.0 * GELU_C * (z + GELU_CUBIC * z * z * z))
    return s + 2.0 * z * s * (1.0 - s) * GELU_C * (1.0 + 3.0 * GELU_CUBIC * z * z)


def _linear_gelu_bprop(x, w, b, out, dout):
    """y = gelu(z), z = x W + b (recomputed): d z = dy gelu'(z), then as `_linear_bprop`."""
    dz = dout * _gelu_grad(_MATMUL(x, w) + b)
    return _MATMUL_NT(dz, w), _MATMUL_TN(x, dz), _SUM_ROWS(dz, 0)


def _head_bprop(x, table, out, dout):
    """y = x T^T: d x = dy T, d T = dy^T x."""
    return _MATMUL(dout, table), _MATMUL_TN(dout, x)


def _linear_shape(x, w, b):
    return [x[0], w[1]]


def _linear_residual_shape(x, w, b, residual):
    return [x[0], w[1]]


def _head_shape(x, table):
    return [x[0], table[0]]


def _same_dtype(x, *rest):
    return x


def _custom(lib: str, name: str, out_shape, infer_shape, bprop):
    """An aot operator of the kernel library: fixed output shape if given, else an infer function."""
    shape, dtype = (list(out_shape), ms.float32) if out_shape else (infer_shape, _same_dtype)
    return ops.Custom(f"{lib}:{name}", out_shape=shape, out_dtype=dtype, func_type="aot", bprop=bprop)


class LinearKernel(nn.Cell):
    """y = x @ w + b: x [T, K], w [K, N] (stored [in, out]), b [N] -> [T, N], fp32.

    For few rows (decoding). The weights are inputs, so one Cell serves every layer of a
    shape. `out_shape` [T, N], when known, is given to the C++ operator as a constant instead
    of a Python infer function.
    """

    def __init__(self, *, fused: bool = True, out_shape: tuple[int, int] | None = None):
        super().__init__()
        lib = cpu_kernel_library() if fused else None
        self.fused = lib is not None
        self.matmul = P.MatMul()
        self.add = P.Add()
        if self.fused:
            self.kernel = _custom(lib, "LinearBias", out_shape, _linear_shape, _linear_bprop)

    def construct(self, x, w, b):
        if self.fused:
            return self.kernel(x, w, b)
        return self.add(self.matmul(x, w), b)


class LinearResidualKernel(nn.Cell):
    """y = x @ w + b + residual: x [T, K], w [K, N], b [N], residual [T, N] -> [T, N] (an output
    projection with its residual add)."""

    def __init__(self, *, fused: bool = True, out_shape: tuple[int, int] | None = None):
        super().__init__()
        lib = cpu_kernel_library() if fused else None
        self.fused = lib is not None
        self.matmul = P.MatMul()
        if self.fused:
            self.kernel = _custom(lib, "LinearBiasResidual", out_shape, _linear_residual_shape, _linear_residual_bprop)

    def construct(self, x, w, b, residual):
        if self.fused:
            return self.kernel(x, w, b, residual)
        return residual + (self.matmul(x, w) + b)


class LinearGeluKernel(nn.Cell):
    """y = gelu(x @ w + b) with the model's GELU: x [T, K], w [K, N], b [N] -> [T, N] (the FFN's
    first projection); the reference is MatMul, Add and `norm_act.GELU`, and the C++ kernel
    evaluates the same formula, x * sigmoid(2c (x + 0.044715 x^3))."""

    def __init__(self, *, fused: bool = True, out_shape: tuple[int, int] | None = None):
        super().__init__()
        lib = cpu_kernel_library() if fused else None
        self.fused = lib is not None
        self.matmul = P.MatMul()
        self.gelu = GELU()
        if self.fused:
            self.kernel = _custom(lib, "LinearBiasGelu", out_shape, _linear_shape, _linear_gelu_bprop)

    def construct(self, x, w, b):
        if self.fused:
            return self.kernel(x, w, b)
        return self.gelu(self.matmul(x, w) + b)


class TiedHeadKernel(nn.Cell):
    """logits = x @ table^T: x [T, H], table [V, H] (the word embedding) -> [T, V], fp32.

    `out_shape` [T, V]: as for `LinearKernel`.
    """

    def __init__(self, *, fused: bool = True, out_shape: tuple[int, int] | None = None):
        super().__init__()
        lib = cpu_kernel_library() if fused else None
        self.fused = lib is not None
        self.matmul = P.MatMul(transpose_b=True)
        if self.fused:
            self.kernel = _custom(lib, "TiedHead", out_shape, _head_shape, _head_bprop)

    def construct(self, x, table):
        if self.fused:
            return self.kernel(x, table)
        return self.matmul(x, table)
