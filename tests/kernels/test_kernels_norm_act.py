"""Fused LayerNorm / GELU kernels equal their reference compositions, forward and backward."""
from __future__ import annotations

import math

import numpy as np
import pytest
from mindspore import Tensor

from pangu_ms.kernels import GELU, ComposedLayerNorm, GeluKernel, LayerNormKernel
from pangu_ms.models.layers import LayerNorm
from pangu_ms.models.pangu_alpha import PanguAlphaLM
from pangu_testing import tiny_model_config, vjp_cell

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(6, 32)) * 3 + 1).astype(np.float32)
GAMMA = RNG.normal(size=32).astype(np.float32)
BETA = RNG.normal(size=32).astype(np.float32)
DY = RNG.normal(size=(6, 32)).astype(np.float32)


def _numpy_layer_norm(x, g, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + b


def _numpy_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))



@pytest.mark.parametrize("fused", [True, False])
def test_layer_norm_forward_matches_numpy(fused):
    y = LayerNormKernel(eps=1e-5, fused=fused)(Tensor(X), Tensor(GAMMA), Tensor(BETA)).asnumpy()
    np.testing.assert_allclose(y, _numpy_layer_norm(X, GAMMA, BETA), atol=2e-5)


def test_layer_norm_reference_is_the_model_layer():
    model_ln = LayerNorm(32, eps=1e-5)
    model_ln.gamma.set_data(Tensor(GAMMA))
    model_ln.beta.set_data(Tensor(BETA))
    ref = LayerNormKernel(eps=1e-5, fused=False)(Tensor(X), Tensor(GAMMA), Tensor(BETA)).asnumpy()
    np.testing.assert_array_equal(ref, model_ln(Tensor(X)).asnumpy())


def test_layer_norm_fused_backward_matches_reference():
    args = (Tensor(X), Tensor(GAMMA), Tensor(BETA), Tensor(DY))
    fused = vjp_cell(LayerNormKernel(eps=1e-5, fused=True))(*args)
    ref = vjp_cell(LayerNormKernel(eps=1e-5, fused=False))(*args)
    assert len(fused) == 3
    for f, r in zip(fused, ref):  # d x, d gamma, d beta
        np.testing.assert_allclose(f.asnumpy(), r.asnumpy(), atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(ref[2].asnumpy(), DY.sum(0), atol=1e-5)  # d beta is the column sum


@pytest.mark.parametrize("fused", [True, False])
def test_gelu_forward_matches_numpy_tanh_form(fused):
    y = GeluKernel(fused=fused)(Tensor(X)).asnumpy()
    np.testing.assert_allclose(y, _numpy_gelu(X), atol=2e-5)


def test_gelu_reference_is_the_model_activation():
    ref = GeluKernel(fused=False)(Tensor(X)).asnumpy()
    np.testing.assert_array_equal(ref, GELU()(Tensor(X)).asnumpy())


def test_model_uses_the_one_composition():
    """The model's LayerNorms and FFN activations are the kernels' compositions (one definition)."""
    lm = PanguAlphaLM(tiny_model_config())
    layer = lm.backbone.blocks[0]
    assert type(layer.ffn.activation) is GELU
    for ln in (layer.ln1, layer.ln2, lm.backbone.final_ln):
        assert isinstance(ln, ComposedLayerNorm) and not hasattr(ln, "layer_norm")


def test_gelu_fused_backward_matches_reference():
    (fused,) = vjp_cell(GeluKernel(fused=True))(Tensor(X), Tensor(DY))
    (ref,) = vjp_cell(GeluKernel(fused=False))(Tensor(X), Tensor(DY))
    np.testing.assert_allclose(fused.asnumpy(), ref.asnumpy(), atol=5e-5, rtol=1e-4)
    # central differences of the numpy form at a few points
    eps = 1e-3
    x64 = X.astype(np.float64)
    fd = (_numpy_gelu(x64 + eps) - _numpy_gelu(x64 - eps)) / (2 * eps) * DY
    np.testing.assert_allclose(ref.asnumpy(), fd, atol=1e-3)
