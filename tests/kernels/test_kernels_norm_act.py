"""The decoder's LayerNorm / GELU forms (single kernels and compositions) equal NumPy and the
training model's reference roles, forward and backward."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mindspore import Tensor

from pangu_ms.kernels import GeluKernel, LayerNormKernel
from pangu_ms.kernels.reference import BiasActivation, LayerNorm
from pangu_testing import vjp_cell

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(6, 32)) * 3 + 1).astype(np.float32)
GAMMA = RNG.normal(size=32).astype(np.float32)
BETA = RNG.normal(size=32).astype(np.float32)
DY = RNG.normal(size=(6, 32)).astype(np.float32)


def _numpy_layer_norm(x, g, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + b


def _numpy_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _numpy_fast_gelu(x):
    return x / (1 + np.exp(-1.702 * x))


NUMPY_ACT = {"gelu": _numpy_gelu, "fast_gelu": _numpy_fast_gelu}


@pytest.mark.parametrize("fused", [True, False])
def test_layer_norm_forward_matches_numpy(fused):
    y = LayerNormKernel(eps=1e-5, fused=fused)(Tensor(X), Tensor(GAMMA), Tensor(BETA)).asnumpy()
    np.testing.assert_allclose(y, _numpy_layer_norm(X, GAMMA, BETA), atol=2e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_layer_norm_forms_equal_the_model_layer(fused):
    model_ln = LayerNorm(32, eps=1e-5)  # the training model's reference role (P.LayerNorm)
    model_ln.gamma.set_data(Tensor(GAMMA))
    model_ln.beta.set_data(Tensor(BETA))
    got = LayerNormKernel(eps=1e-5, fused=fused)(Tensor(X), Tensor(GAMMA), Tensor(BETA)).asnumpy()
    np.testing.assert_allclose(got, model_ln(Tensor(X)).asnumpy(), atol=2e-6)


def test_layer_norm_fused_backward_matches_reference():
    args = (Tensor(X), Tensor(GAMMA), Tensor(BETA), Tensor(DY))
    fused = vjp_cell(LayerNormKernel(eps=1e-5, fused=True))(*args)
    ref = vjp_cell(LayerNormKernel(eps=1e-5, fused=False))(*args)
    assert len(fused) == 3
    for f, r in zip(fused, ref):  # d x, d gamma, d beta
        np.testing.assert_allclose(f.asnumpy(), r.asnumpy(), atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(ref[2].asnumpy(), DY.sum(0), atol=1e-5)  # d beta is the column sum


@pytest.mark.parametrize("kind", ["gelu", "fast_gelu"])
@pytest.mark.parametrize("fused", [True, False])
def test_activation_forms_match_numpy_and_the_model_activation(fused, kind):
    y = GeluKernel(fused=fused, kind=kind)(Tensor(X)).asnumpy()
    np.testing.assert_allclose(y, NUMPY_ACT[kind](X.astype(np.float64)), atol=2e-5)
    model = BiasActivation(kind)(Tensor(X), Tensor(np.zeros(32, np.float32))).asnumpy()  # the model's role
    np.testing.assert_allclose(y, model, atol=2e-6)


def test_gelu_fused_backward_matches_reference():
    (fused,) = vjp_cell(GeluKernel(fused=True))(Tensor(X), Tensor(DY))
    (ref,) = vjp_cell(GeluKernel(fused=False))(Tensor(X), Tensor(DY))
    np.testing.assert_allclose(fused.asnumpy(), ref.asnumpy(), atol=5e-5, rtol=1e-4)
    # central differences of the numpy form at a few points
    eps = 1e-3
    x64 = X.astype(np.float64)
    fd = (_numpy_gelu(x64 + eps) - _numpy_gelu(x64 - eps)) / (2 * eps) * DY
    np.testing.assert_allclose(ref.asnumpy(), fd, atol=1e-3)
