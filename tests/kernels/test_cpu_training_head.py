"""TiedHeadCrossEntropy (C++ training kernel) against float64 NumPy and against its reference
composition (MatMul, LogSoftmax, gather), loss and gradients, fp32 and fp16, both ISAs, both
ways of computing the gradients, padding, chunk boundaries and large logits."""
from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor

from cpu_training_testing import ISAS, assert_close, forward_and_vjp, fused_cell, pynative
from pangu_ms.kernels.cpu_training import TiedHeadCrossEntropy

PAD = 6

pytestmark = pytest.mark.usefixtures("pynative")


@pytest.fixture()
def rng():
    return np.random.default_rng(1500)


def _numpy_head(h, table, labels, pad, dloss):
    """(loss, dh, dtable) in float64."""
    logits = h @ table.T
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    keep = labels != pad
    count = max(keep.sum(), 1)
    rows = np.arange(len(labels))
    safe = np.where(keep, labels, 0)
    loss = ((lse - logits[rows, safe]) * keep).sum() / count
    dl = np.exp(logits - lse[:, None])
    dl[rows, safe] -= 1.0
    dl *= (keep * dloss / count)[:, None]
    return loss, dl @ table, dl.T @ h


def _case(rng, t, h, v, *, pad_every=4, scale=1.0):
    hid = rng.normal(size=(t, h))
    table = rng.normal(size=(v, h)) * scale / np.sqrt(h)
    labels = rng.integers(0, v, size=t).astype(np.int32)
    labels[1::pad_every] = PAD
    return hid, table, labels


def _check(hid, table, labels, dtype, isa, grad_in_forward, *, dloss=3.0, with_reference=True):
    fused = fused_cell(TiedHeadCrossEntropy, PAD, isa=isa, grad_in_forward=grad_in_forward)
    ref = TiedHeadCrossEntropy(PAD, fused=False)
    h_in, t_in = hid.astype(dtype), table.astype(dtype)
    loss, dh, dt = _numpy_head(h_in.astype(np.float64), t_in.astype(np.float64), labels, PAD, dloss)
    args = [Tensor(h_in), Tensor(t_in), Tensor(labels), Tensor(np.float32(dloss))]
    for cell in (fused, ref) if with_reference else (fused,):
        out, grads = forward_and_vjp(cell)(*args)
        assert out.shape == ()
        # the loss is fp32 either way; with fp16 inputs the reference's fp32 math matches ours
        assert_close(out, np.float64(loss), np.float32, scale=1.0, rtol32=2e-6)
        assert_close(grads[0], dh, dtype, scale=np.abs(dh).max(), rtol32=2e-5, rtol16=3e-3)
        assert_close(grads[1], dt, dtype, scale=np.abs(dt).max(), rtol32=2e-5, rtol16=3e-3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["grad-in-forward", "recompute"])
@pytest.mark.parametrize("shape", [(1, 8, 5), (37, 53, 101), (400, 64, 1000)])  # 400 > one 384-token chunk
def test_tied_head_cross_entropy(shape, grad_in_forward, dtype, isa, rng):
    _check(*_case(rng, *shape), dtype, isa, grad_in_forward)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["grad-in-forward", "recompute"])
def test_all_padding_gives_zero_loss_and_gradients(grad_in_forward, isa, rng):
    hid, table, labels = _case(rng, 10, 16, 40)
    labels[:] = PAD
    cell = fused_cell(TiedHeadCrossEntropy, PAD, isa=isa, grad_in_forward=grad_in_forward)
    out, (dh, dt, *_) = forward_and_vjp(cell)(Tensor(hid.astype(np.float32)), Tensor(table.astype(np.float32)),
                                              Tensor(labels), Tensor(np.float32(1.0)))
    assert float(out.asnumpy()) == 0.0
    assert not dh.asnumpy().any() and not dt.asnumpy().any()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_large_logits_stay_finite(dtype, isa, rng):
    """Logits of several thousand (exp overflows fp32 long before): finite, and equal to NumPy.
    Not the reference, whose fp16 inputs are fine but whose log-softmax is also what we test."""
    hid, table, labels = _case(rng, 30, 16, 50, scale=400.0 if dtype == np.float32 else 60.0)
    _check(hid, table, labels, dtype, isa, True, dloss=1.0, with_reference=False)


def test_a_label_out_of_range_stops_the_kernel(rng):
    hid, table, labels = _case(rng, 4, 8, 10)
    labels[1] = 10  # V = 10: out of range, and not the pad id
    cell = fused_cell(TiedHeadCrossEntropy, PAD)
    with pytest.raises(RuntimeError, match="is 4"):
        cell(Tensor(hid.astype(np.float32)), Tensor(table.astype(np.float32)), Tensor(labels)).asnumpy()


def test_mixed_input_dtypes(rng):
    """fp16 hidden states with an fp32 table (and the reverse) give the fp32 math of the rounded
    inputs, each gradient in its input's dtype."""
    hid, table, labels = _case(rng, 37, 24, 70)
    for dh_type, dt_type in ((np.float16, np.float32), (np.float32, np.float16)):
        cell = fused_cell(TiedHeadCrossEntropy, PAD)
        h_in, t_in = hid.astype(dh_type), table.astype(dt_type)
        loss, dh, dt = _numpy_head(h_in.astype(np.float64), t_in.astype(np.float64), labels, PAD, 1.0)
        out, grads = forward_and_vjp(cell)(Tensor(h_in), Tensor(t_in), Tensor(labels), Tensor(np.float32(1.0)))
        assert_close(out, np.float64(loss), np.float32, scale=1.0, rtol32=2e-6)
        assert_close(grads[0], dh, dh_type, scale=np.abs(dh).max(), rtol16=3e-3)
        assert_close(grads[1], dt, dt_type, scale=np.abs(dt).max(), rtol16=3e-3)
