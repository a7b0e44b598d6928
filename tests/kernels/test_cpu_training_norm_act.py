"""BiasActivation and AddLayerNorm (C++ training kernels) against NumPy in float64 and against
their reference compositions of MindSpore ops, forward and backward, fp32 and fp16, both ISAs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from cpu_training_testing import ISAS, assert_close, f16_round, fused_cell, pynative
from pangu_ms.kernels.cpu_training import AddLayerNorm, BiasActivation
from pangu_testing import vjp_cell

# a single token, odd widths (vector tails), and more rows than one 64-row block
SHAPES = [(1, 7), (37, 53), (66, 1024)]
DTYPES = [np.float32, np.float16]

pytestmark = pytest.mark.usefixtures("pynative")


@pytest.fixture()
def rng():
    return np.random.default_rng(15)


def _gelu_tanh(z):
    """The tanh GELU as usually written (the kernel evaluates its sigmoid form)."""
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))


def _fast_gelu(z):
    return z * 0.5 * (1.0 + np.tanh(0.851 * z))  # z * sigmoid(1.702 z), without exp overflow


ACT = {"gelu": _gelu_tanh, "fast_gelu": _fast_gelu}


def _act_grad(kind, z, h=1e-5):
    """act'(z) by central differences in float64 (independent of the kernel's formula)."""
    return (ACT[kind](z + h) - ACT[kind](z - h)) / (2 * h)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["gelu", "fast_gelu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_activation_forward_backward(shape, kind, dtype, isa, rng):
    t, f = shape
    x = (rng.normal(size=shape) * 2).astype(dtype)
    bias = rng.normal(size=f).astype(np.float32)
    dy = rng.normal(size=shape).astype(dtype)
    fused = fused_cell(BiasActivation, kind, isa=isa)
    ref = BiasActivation(kind, fused=False)
    args = [Tensor(a) for a in (x, bias)]
    z = x.astype(np.float64) + bias
    want = ACT[kind](z)
    assert_close(fused(*args), want, dtype, scale=1.0)
    assert_close(ref(*args), want, dtype, scale=1.0)
    dx_want = dy.astype(np.float64) * _act_grad(kind, z)
    got, got_ref = vjp_cell(fused)(*args, Tensor(dy)), vjp_cell(ref)(*args, Tensor(dy))
    assert len(got) == 2
    for g, r in ((got, "fused"), (got_ref, "reference")):
        assert_close(g[0], dx_want, dtype, scale=1.0)
        # dbias sums t rows: fp16 dx rounding adds up, relative to the size of the sum's terms
        assert_close(g[1], dx_want.sum(0), np.float32, scale=np.abs(dx_want).sum(0).max(),
                     rtol32=2e-5 if dtype == np.float32 else 2e-3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", ["gelu", "fast_gelu"])
def test_bias_activation_large_values_stay_finite(kind, isa):
    """|x| up to 3e4 (fp32 and fp16): act(x) -> x or 0, act' -> 1 or 0, no inf or NaN from exp."""
    x = np.concatenate([np.linspace(-3e4, 3e4, 61), [-88.0, -87.5, 87.5, 88.5, 0.0]]).reshape(1, -1)
    bias = np.zeros(x.shape[1], np.float32)
    fused = fused_cell(BiasActivation, kind, isa=isa)
    for dtype in DTYPES:
        xd = x.astype(dtype)
        y = fused(Tensor(xd), Tensor(bias))
        assert_close(y, ACT[kind](xd.astype(np.float64)), dtype)
        dx, db = vjp_cell(fused)(Tensor(xd), Tensor(bias), Tensor(np.ones_like(xd)))
        want = _act_grad(kind, xd.astype(np.float64))
        assert_close(dx, want, dtype, scale=1.0)
        assert_close(db, want[0], np.float32, scale=1.0)


def _numpy_add_layer_norm(x, res, g, b, eps):
    s = res + x
    mu = s.mean(-1, keepdims=True)
    var = ((s - mu) ** 2).mean(-1, keepdims=True)
    return s, (s - mu) / np.sqrt(var + eps) * g + b


def _numpy_add_layer_norm_grads(x, res, g, b, eps, ds, dy):
    """(dx = dres, dgamma, dbeta) in float64 for the loss sum(s ds) + sum(y dy)."""
    s = res + x
    n = s.shape[-1]
    mu = s.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((s - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (s - mu) * rstd
    gy = dy * g
    dxhat_part = n * gy - gy.sum(-1, keepdims=True) - xhat * (gy * xhat).sum(-1, keepdims=True)
    return ds + rstd / n * dxhat_part, (dy * xhat).sum(0), dy.sum(0)


class _BothOutputs(nn.Cell):
    """sum(s * ds) + sum(y * dy): a loss reading both outputs of AddLayerNorm."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x, residual, gamma, beta, ds, dy):
        s, y = self.cell(x, residual, gamma, beta)
        return (s * ds).sum() + (y * dy).sum()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7), (37, 53), (66, 256)])
def test_add_layer_norm_forward_backward(shape, dtype, isa, rng):
    x = (rng.normal(size=shape) * 2).astype(dtype)
    res = (rng.normal(size=shape) * 3 + 1.5).astype(np.float32)
    g, b = rng.normal(size=shape[1]).astype(np.float32), rng.normal(size=shape[1]).astype(np.float32)
    ds, dy = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    fused = fused_cell(AddLayerNorm, 1e-5, isa=isa)
    ref = AddLayerNorm(1e-5, fused=False)
    args = [Tensor(a) for a in (x, res, g, b)]
    s_want, y_want = _numpy_add_layer_norm(x.astype(np.float64), res, g, b, 1e-5)
    grads_want = _numpy_add_layer_norm_grads(x.astype(np.float64), res, g, b, 1e-5, ds, dy)
    for cell in (fused, ref):
        s, y = cell(*args)
        assert_close(s, s_want, np.float32)
        assert_close(y, y_want, np.float32, scale=3.0, rtol32=1e-5)
        dx, dres, dg, db = ops.GradOperation(get_all=True)(_BothOutputs(cell))(*args, Tensor(ds), Tensor(dy))[:4]
        assert_close(dx, grads_want[0], dtype, scale=3.0)
        assert_close(dres, grads_want[0], np.float32, scale=3.0)
        assert_close(dg, grads_want[1], np.float32, scale=float(np.abs(dy).sum(0).max()) * 3)
        assert_close(db, grads_want[2], np.float32, scale=float(np.abs(dy).sum(0).max()))


@pytest.mark.parametrize("isa", ISAS)
def test_add_layer_norm_large_offsets_and_constant_rows(isa, rng):
    """Rows with |mean| = 1e4 >> std (a one-pass E[s^2] - mean^2 would cancel) and a constant row
    (variance 0: y = beta, finite gradients)."""
    h = 67
    x = np.zeros((3, h), np.float32)
    res = np.stack([1e4 + rng.normal(size=h), -3e4 + 0.01 * rng.normal(size=h), np.full(h, 7.0)]).astype(np.float32)
    g, b = rng.normal(size=h).astype(np.float32), rng.normal(size=h).astype(np.float32)
    fused = fused_cell(AddLayerNorm, 1e-5, isa=isa)
    s, y = fused(*[Tensor(a) for a in (x, res, g, b)])
    _, y_want = _numpy_add_layer_norm(res.astype(np.float64), 0.0, g, b, 1e-5)
    # the fp32 sum itself is rounded to ulp(3e4) = 2e-3, which the 0.01-std row magnifies
    np.testing.assert_allclose(y.asnumpy()[[0, 2]], y_want[[0, 2]], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y.asnumpy()[1], y_want[1], atol=0.5)
    ds, dy = np.zeros_like(res), rng.normal(size=res.shape).astype(np.float32)
    grads = ops.GradOperation(get_all=True)(_BothOutputs(fused))(*[Tensor(a) for a in (x, res, g, b, ds, dy)])
    assert all(np.isfinite(t.asnumpy()).all() for t in grads[:4])


def test_fused_cells_report_their_isa_and_reject_unknown_ones():
    assert fused_cell(BiasActivation, "gelu", isa="avx2").isa == "avx2"
    with pytest.raises(ValueError, match="isa='sse'"):
        BiasActivation("gelu", isa="sse")
    with pytest.raises(ValueError, match="kind='relu'"):
        BiasActivation("relu")
    assert AddLayerNorm(fused=False).fused is False
