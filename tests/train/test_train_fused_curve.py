"""200 optimizer steps with `model.kernels: fused` follow the reference run's loss curve.

Both runs start from the same weights and see the same packed rows (end-of-document resets
included); the fused run differs only in rounding (fp32 kernels summing in another order), so
its losses stay within a small gap of the reference losses for the whole run while both learn.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_ms.config import ModelConfig, OptimizerConfig, ScheduleConfig
from pangu_ms.data.dataset import eod_reset
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
from pangu_ms.train.optimizer import build_optimizer
from pangu_ms.train.step import Trainer
from toy_data import TOY_MODEL, toy_rows

STEPS, BATCH = 200, 4
OPT = OptimizerConfig(lr=3e-3, min_lr=3e-4, loss_scale=65536.0)
SCHED = ScheduleConfig(warmup_steps=10)


def _losses(kernels: str, weights: dict | None) -> tuple[list[float], dict]:
    cfg = ModelConfig(**TOY_MODEL, kernels=kernels)
    ms.set_seed(21)
    net = PanguAlphaWithLoss(cfg)
    if weights is not None:
        for p in net.trainable_params():
            p.set_data(Tensor(weights[p.name]))
    start = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    trainer = Trainer(net, build_optimizer(net.trainable_params(), OPT, SCHED, STEPS), OPT)
    assert trainer.fused_update == (kernels == "fused")
    rows = toy_rows(STEPS * BATCH, cfg.seq_length, cfg.vocab_size, eod_id=cfg.eod_id, seed=5)
    losses = []
    for step in range(STEPS):
        batch = rows[step * BATCH:(step + 1) * BATCH]
        pos, doc = eod_reset(batch, cfg.eod_id)
        res = trainer.step([(Tensor(batch), Tensor(pos), Tensor(doc))])
        assert not res.overflow
        losses.append(res.loss)
    return losses, start


@pytest.mark.e2e
def test_fused_run_follows_the_reference_loss_curve():
    ref, start = _losses("reference", None)
    fused, _ = _losses("fused", start)
    ref, fused = np.array(ref), np.array(fused)
    gap = np.abs(fused - ref)
    assert gap[0] < 1e-5  # the same weights and batch: one rounding apart
    assert ref[-20:].mean() < ref[:20].mean() - 1.0  # the runs learn (counting documents)
    assert gap.max() < 1e-3, f"largest gap {gap.max():.2e} at step {gap.argmax() + 1}"
    print(f"fused vs reference over {STEPS} steps: largest |loss gap| {gap.max():.3e} at step {gap.argmax() + 1}, "
          f"final losses {ref[-1]:.4f} / {fused[-1]:.4f}")
