"""`model.kernels: fused` on CPU: the C++ kernels are what runs, and the model they make equals
the reference model (loss and every gradient) within fp32 tolerance.

These tests FAIL, never skip, when the C++ training library cannot be built here: CI must
notice a lost fused path.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import compiled_op_dtypes, tiny_model_config
from pangu_ms.data.dataset import eod_reset
from pangu_ms.kernels import cpu_fused
from pangu_ms.kernels.cpu_training import cpu_training_library
from pangu_ms.kernels.switch import kernel_spec
from pangu_ms.config import OptimizerConfig, ScheduleConfig
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
from pangu_ms.train.optimizer import FusedAdamWUpdate, build_optimizer
from pangu_ms.train.step import Trainer


def _fused_spec():
    if cpu_training_library() is None:
        pytest.fail("the C++ training kernels did not build here (see the warning above): model.kernels=fused "
                    "would run the reference ops; install g++ on an AVX2+FMA CPU")
    spec = kernel_spec("fused", device="CPU")
    assert type(spec) is cpu_fused.CpuFusedKernels, spec
    return spec


def _batch(cfg, b=3, seed=0):
    """Packed rows with end-of-document resets (a one-token document too) and padded labels."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(10, cfg.vocab_size, (b, cfg.seq_length + 1)).astype(np.int32)
    rows[0, [3, 9]] = cfg.eod_id
    rows[1, [0, 1, 12]] = cfg.eod_id
    rows[2, -4:] = cfg.pad_id
    pos, doc = eod_reset(rows, cfg.eod_id)
    return Tensor(rows), Tensor(pos), Tensor(doc)


def _pair(**overrides):
    """(reference model, fused model) with identical weights."""
    cfg = tiny_model_config(init_std=0.1, **overrides)
    ms.set_seed(9)
    ref = PanguAlphaWithLoss(cfg, kernel_spec("reference", device="CPU"))
    fused = PanguAlphaWithLoss(cfg, _fused_spec())
    weights = {p.name: p.asnumpy() for p in ref.trainable_params()}
    assert set(weights) == {p.name for p in fused.trainable_params()}  # same checkpoint names
    rng = np.random.default_rng(1)
    for p in fused.trainable_params():  # LayerNorm gains and biases away from 1 and 0 too
        w = weights[p.name] + 0.05 * rng.standard_normal(p.shape).astype(np.float32)
        p.set_data(Tensor(w))
        next(q for q in ref.trainable_params() if q.name == p.name).set_data(Tensor(w))
    return cfg, ref, fused


def test_fused_path_is_the_one_running(tmp_path):
    cfg, _, fused = _pair()
    block = fused.lm.backbone.blocks[0]
    held = [block.ln1, block.ln2, block.ffn.linear_fc1.activation, block.attention.core, fused.lm.backbone.final_ln]
    assert [type(c).__name__ for c in held] == ["CpuLayerNorm", "CpuAddLayerNorm", "CpuBiasActivation",
                                                "CpuFlashAttention", "CpuLayerNorm"]
    held.append(fused.loss)
    assert type(fused.loss).__name__ == "CpuTiedHeadCrossEntropy"
    assert all(c.kernel.fused for c in held)  # the C++ operator, not the Cell's own fallback
    assert type(fused.lm.backbone.attention_mask).__name__ == "DocumentIds"  # no [B, S, S] mask built
    opt = OptimizerConfig()
    trainer = Trainer(fused, build_optimizer(fused.trainable_params(), opt, ScheduleConfig(), 10), opt)
    assert isinstance(trainer.cell.fused_update, FusedAdamWUpdate) and trainer.cell.fused_update.kernel.fused
    ops = compiled_op_dtypes(trainer.cell, _batch(cfg), tmp_path / "ir")  # forward, backward, update
    assert "Custom" in ops
    assert not ops.keys() & {"Softmax", "LayerNorm", "BatchMatMul", "LogSoftmax", "GeLU", "AdamWeightDecay"}, ops.keys()


@pytest.mark.parametrize("activation", ["gelu", "fast_gelu"])
def test_fused_loss_and_every_gradient_equal_the_reference(activation):
    cfg, ref, fused = _pair(activation=activation)
    batch = _batch(cfg)
    loss_r, loss_f = float(ref(*batch).asnumpy()), float(fused(*batch).asnumpy())
    assert loss_f == pytest.approx(loss_r, rel=2e-6)
    g_ref = ms.grad(ref, grad_position=None, weights=ref.trainable_params())(*batch)
    g_fused = ms.grad(fused, grad_position=None, weights=fused.trainable_params())(*batch)
    grads = {p.name: (gr.asnumpy(), gf.asnumpy()) for p, gr, gf in zip(ref.trainable_params(), g_ref, g_fused)}
    top = max(np.abs(gr).max() for gr, _ in grads.values())
    worst = 0.0
    for name, (gr, gf) in grads.items():
        if name.endswith("linear_k.bias"):  # softmax is shift-invariant: exactly 0 up to rounding
            assert max(np.abs(gr).max(), np.abs(gf).max()) < 1e-6 * top, name
            continue
        err = np.abs(gf - gr).max() / np.abs(gr).max()
        worst = max(worst, err)
        assert err < 1e-4, f"{name}: max |fused - reference| / max |reference| = {err:.2e}"
    assert 0.0 < worst  # two implementations: equal within rounding, not the same ops


def test_fused_with_dropout_keeps_the_reference_attention():
    cfg = tiny_model_config(dropout=0.1)
    net = PanguAlphaWithLoss(cfg, _fused_spec())
    assert type(net.lm.backbone.blocks[0].attention.core).__name__ == "CoreAttention"  # no dropout in C++
    assert type(net.lm.backbone.blocks[0].ln2).__name__ == "CpuAddLayerNorm"
    net.set_train(True)
    assert np.isfinite(float(net(*_batch(cfg)).asnumpy()))
