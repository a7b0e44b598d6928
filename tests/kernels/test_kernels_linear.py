"""The C++ matrix-vector kernels equal their MatMul references, forward and backward."""
from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor

from pangu_ms.kernels import (LinearGeluKernel, LinearKernel, LinearResidualKernel, TiedHeadKernel,
                              cpu_kernel_library)
from pangu_testing import require_cpu_kernels, vjp_cell

RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def _fused_means_the_cpp_kernel():
    """Every test here compares the C++ kernels with something: they must be the ones running."""
    require_cpu_kernels()


def _arr(*shape):
    return RNG.normal(size=shape).astype(np.float32)



def test_library_builds_here():
    assert cpu_kernel_library() is not None
    kernels = (LinearKernel(fused=True), LinearGeluKernel(fused=True), LinearResidualKernel(fused=True),
               TiedHeadKernel(fused=True))
    assert all(k.fused for k in kernels)
    assert not any(k.fused for k in (LinearKernel(fused=False), TiedHeadKernel(fused=False)))


@pytest.mark.parametrize("rows,k,n", [(1, 64, 48), (3, 37, 13), (2, 1024, 256)])  # odd sizes hit the tail loops
def test_linear_fused_forward_matches_reference_and_numpy(rows, k, n):
    x, w, b = _arr(rows, k), _arr(k, n), _arr(n)
    fused = LinearKernel(fused=True)(Tensor(x), Tensor(w), Tensor(b)).asnumpy()
    fixed = LinearKernel(fused=True, out_shape=(rows, n))(Tensor(x), Tensor(w), Tensor(b)).asnumpy()
    ref = LinearKernel(fused=False)(Tensor(x), Tensor(w), Tensor(b)).asnumpy()
    expect = x.astype(np.float64) @ w + b
    np.testing.assert_allclose(ref, expect, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fused, expect, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(fixed, fused)


@pytest.mark.parametrize("rows,h,v", [(1, 64, 100), (3, 37, 29)])
def test_tied_head_fused_forward_matches_reference_and_numpy(rows, h, v):
    x, table = _arr(rows, h), _arr(v, h)
    fused = TiedHeadKernel(fused=True)(Tensor(x), Tensor(table)).asnumpy()
    ref = TiedHeadKernel(fused=False)(Tensor(x), Tensor(table)).asnumpy()
    expect = x.astype(np.float64) @ table.T
    np.testing.assert_allclose(ref, expect, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fused, expect, rtol=1e-5, atol=1e-4)


def test_linear_fused_backward_matches_reference():
    x, w, b, dy = _arr(3, 20), _arr(20, 12), _arr(12), _arr(3, 12)
    args = [Tensor(a) for a in (x, w, b, dy)]
    fused = vjp_cell(LinearKernel(fused=True))(*args)
    ref = vjp_cell(LinearKernel(fused=False))(*args)
    assert len(fused) == 3
    for f, r, e in zip(fused, ref, (dy @ w.T, x.T @ dy, dy.sum(0))):
        np.testing.assert_allclose(f.asnumpy(), r.asnumpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f.asnumpy(), e, rtol=1e-5, atol=1e-5)


def test_tied_head_fused_backward_matches_reference():
    x, table, dy = _arr(2, 16), _arr(30, 16), _arr(2, 30)
    args = [Tensor(a) for a in (x, table, dy)]
    fused = vjp_cell(TiedHeadKernel(fused=True))(*args)
    ref = vjp_cell(TiedHeadKernel(fused=False))(*args)
    for f, r, e in zip(fused, ref, (dy @ table, dy.T @ x)):
        np.testing.assert_allclose(f.asnumpy(), r.asnumpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f.asnumpy(), e, rtol=1e-5, atol=1e-5)


def _numpy_gelu(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))


@pytest.mark.parametrize("fused", [True, False])
def test_linear_residual_and_gelu_forward_match_numpy(fused):
    x, w, b, r = _arr(2, 33), _arr(33, 19), _arr(19), _arr(2, 19)
    z = x.astype(np.float64) @ w + b
    got = LinearResidualKernel(fused=fused, out_shape=(2, 19))(Tensor(x), Tensor(w), Tensor(b), Tensor(r)).asnumpy()
    np.testing.assert_allclose(got, z + r, rtol=1e-5, atol=1e-4)
    got = LinearGeluKernel(fused=fused)(Tensor(x), Tensor(w), Tensor(b)).asnumpy()
    np.testing.assert_allclose(got, _numpy_gelu(z), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_linear_gelu_is_the_models_sigmoid_form(fused):
    """The C++ LinearBiasGelu evaluates the model's z * sigmoid(2c (z + 0.044715 z^3)), not
    0.5 z (1 + tanh(...)): at negative z, where 1 + tanh cancels to 0 in fp32 (from z = -5 on),
    both forms here agree with float64 to relative 1e-4 down to outputs of 1e-35."""
    z = np.linspace(-9.5, 4.0, 40).astype(np.float32)
    x, w = np.zeros((2, 3), np.float32), np.zeros((3, 40), np.float32)  # z = x w + b = b exactly
    got = LinearGeluKernel(fused=fused, out_shape=(2, 40))(Tensor(x), Tensor(w), Tensor(z)).asnumpy()
    z64 = z.astype(np.float64)
    truth = z64 / (1.0 + np.exp(-2 * np.sqrt(2 / np.pi) * (z64 + 0.044715 * z64 ** 3)))
    assert 0 < np.abs(truth[z < -8]).max() < 1e-20  # a tail that the tanh form flushes to 0 in fp32
    np.testing.assert_allclose(got, np.broadcast_to(truth, got.shape), rtol=1e-4, atol=0)


def test_linear_residual_and_gelu_backward_match_reference():
    x, w, b, r, dy = _arr(3, 20), _arr(20, 12) * 0.3, _arr(12), _arr(3, 12), _arr(3, 12)
    args = [Tensor(a) for a in (x, w, b, r, dy)]
    fused = vjp_cell(LinearResidualKernel(fused=True))(*args)
    ref = vjp_cell(LinearResidualKernel(fused=False))(*args)
    assert len(fused) == 4
    for f, e in zip(fused, ref):
        np.testing.assert_allclose(f.asnumpy(), e.asnumpy(), rtol=1e-5, atol=1e-5)
    args = [Tensor(a) for a in (x, w, b, dy)]
    fused = vjp_cell(LinearGeluKernel(fused=True))(*args)
    ref = vjp_cell(LinearGeluKernel(fused=False))(*args)  # autodiff of the composed GELU
    # float64 truth: central differences of the GELU, then the linear chain rule
    z = x.astype(np.float64) @ w + b
    dz = dy * (_numpy_gelu(z + 1e-6) - _numpy_gelu(z - 1e-6)) / 2e-6
    truth = (dz @ w.T, x.T @ dz, dz.sum(0))
    assert len(fused) == 3
    for f, e, t in zip(fused, ref, truth):
        np.testing.assert_allclose(e.asnumpy(), t, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(f.asnumpy(), t, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(f.asnumpy(), e.asnumpy(), rtol=1e-3, atol=1e-3)
