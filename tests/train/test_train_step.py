"""The train step: AdamW + schedule against NumPy, forced overflow, loss-scale growth,
gradient accumulation, fp16 compute. One compiled step per kernel set shared by the module:
`model.kernels: fused` applies AdamW with the fused C++ kernel, `reference` with
`nn.AdamWeightDecay`; both must give the NumPy update."""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_model_config
from pangu_ms.config import OptimizerConfig, ScheduleConfig
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
from pangu_ms.train.optimizer import WarmupCosineLR, build_optimizer, decays, lr_at, param_groups
from pangu_ms.train.step import Trainer

OPT = OptimizerConfig(lr=1e-2, min_lr=1e-3, eps=1.0, weight_decay=0.1, clip_norm=0.1,
                      loss_scale=2.0 ** 10, loss_scale_window=3)
SCHED = ScheduleConfig(warmup_steps=2)
TOTAL = 10


def _batch(cfg, b, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, cfg.vocab_size, (b, cfg.seq_length + 1)).astype(np.int32)
    pos = np.tile(np.arange(cfg.seq_length, dtype=np.int32), (b, 1))
    doc = np.zeros((b, cfg.seq_length), np.int32)  # one document per row: a plain causal mask
    return Tensor(ids), Tensor(pos), Tensor(doc)


def _build(cfg, accum=1, opt=OPT):
    ms.set_seed(11)
    net = PanguAlphaWithLoss(cfg)
    optimizer = build_optimizer(net.trainable_params(), opt, SCHED, TOTAL)
    return net, Trainer(net, optimizer, opt, accum_steps=accum)


def _state(trainer):
    return {p.name: p.asnumpy().copy() for p in trainer.cell.get_parameters()}


class _Rig:
    def __init__(self, kernels: str):
        self.cfg = tiny_model_config(kernels=kernels)
        self.net, self.trainer = _build(self.cfg)
        assert self.trainer.fused_update == (kernels == "fused")
        self.initial = _state(self.trainer)
        self.batch = _batch(self.cfg, 4, 0)

    def reset(self):
        # copy_ writes in place: after a compile, set_data would leave the graph writing to
        # the old buffers (its updates then never show up in Python)
        for p in self.trainer.cell.get_parameters():
            p.copy_(Tensor(self.initial[p.name]))


@pytest.fixture(scope="module", params=["fused", "reference"])
def rig(request):
    return _Rig(request.param)


def test_lr_schedule_graph_matches_python():
    sched = WarmupCosineLR(OPT, SCHED, TOTAL)
    got = [float(sched(Tensor(s, ms.int32)).asnumpy()) for s in range(TOTAL + 2)]
    want = [lr_at(s, OPT, SCHED, TOTAL) for s in range(TOTAL + 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert want[0] == pytest.approx(OPT.lr / 2) and want[1] == pytest.approx(OPT.lr)
    assert want[TOTAL] == pytest.approx(OPT.min_lr) and want[TOTAL + 1] == pytest.approx(OPT.min_lr)
    assert want[2] > want[5] > want[9]


def test_no_weight_decay_on_layernorm_and_biases(rig):
    groups = param_groups(rig.net.trainable_params(), 0.1)
    no_decay = {p.name for p in groups[1]["params"]}
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.1
    assert "lm.backbone.blocks.0.ln1.gamma" in no_decay and "lm.backbone.final_ln.beta" in no_decay
    assert "lm.backbone.blocks.0.attention.linear_q.bias" in no_decay
    assert all(n.endswith(("gamma", "beta", "bias")) for n in no_decay)
    assert decays("lm.backbone.word_embedding.embedding_table") and decays("lm.backbone.blocks.1.ffn.linear_fc1.weight")


def test_step_equals_numpy_adamw_with_clipping(rig):
    rig.reset()
    params = rig.net.trainable_params()
    grads = ms.grad(rig.net, grad_position=None, weights=params)(*rig.batch)
    g = {p.name: gi.asnumpy().astype(np.float64) for p, gi in zip(params, grads)}
    norm = math.sqrt(sum((x * x).sum() for x in g.values()))
    assert norm > OPT.clip_norm  # clipping is active
    lr = lr_at(0, OPT, SCHED, TOTAL)
    res = rig.trainer.step([rig.batch])
    assert not res.overflow and res.grad_norm == pytest.approx(norm, rel=1e-4)
    for p in params:
        w0 = rig.initial[p.name].astype(np.float64)
        gc = g[p.name] * OPT.clip_norm / norm
        m, v = (1 - OPT.beta1) * gc, (1 - OPT.beta2) * gc * gc
        update = m / (OPT.eps + np.sqrt(v)) + (OPT.weight_decay * w0 if decays(p.name) else 0.0)
        np.testing.assert_allclose(p.asnumpy(), w0 - lr * update, rtol=0, atol=2e-7, err_msg=p.name)
    assert rig.trainer.optimizer_step == 1


def test_forced_overflow_skips_step_and_halves_scale(rig):
    rig.reset()
    rig.trainer.loss_scale.copy_(Tensor(2.0 ** 127, ms.float32))  # scaled grads overflow fp32
    before = _state(rig.trainer)
    res = rig.trainer.step([rig.batch])
    after = _state(rig.trainer)
    assert res.overflow and res.loss_scale == 2.0 ** 126
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"loss_scale", "current_iterator_step", "last_overflow_iterator_step"}
    assert rig.trainer.optimizer_step == 0
    rig.trainer.loss_scale.copy_(Tensor(2.0 ** 10, ms.float32))
    res = rig.trainer.step([rig.batch])  # a sane scale trains again
    assert not res.overflow and rig.trainer.optimizer_step == 1
    assert not np.array_equal(_state(rig.trainer)["lm.backbone.final_ln.gamma"], before["lm.backbone.final_ln.gamma"])


def test_loss_scale_grows_after_clean_window(rig):
    rig.reset()
    scales = [rig.trainer.step([rig.batch]).loss_scale for _ in range(4)]
    assert scales == [2.0 ** 10, 2.0 ** 10, 2.0 ** 11, 2.0 ** 11]  # window 3, factor 2


def test_gradient_accumulation_matches_full_batch(rig):
    rig.reset()
    net2, acc = _build(rig.cfg, accum=2)
    ids, pos, doc = rig.batch
    for _ in range(2):
        full = rig.trainer.step([rig.batch])
        half = acc.step([(ids[:2], pos[:2], doc[:2]), (ids[2:], pos[2:], doc[2:])])
        assert half.loss == pytest.approx(full.loss, rel=1e-5)
        assert half.grad_norm == pytest.approx(full.grad_norm, rel=1e-4)
    for p, q in zip(rig.net.trainable_params(), net2.trainable_params()):
        np.testing.assert_allclose(q.asnumpy(), p.asnumpy(), rtol=0, atol=1e-6, err_msg=p.name)
    accums = [p for p in acc.cell.get_parameters() if p.name.startswith("accum.")]
    assert accums and all(not p.asnumpy().any() for p in accums)  # zeroed after each apply


def test_fp16_compute_keeps_fp32_state():
    cfg = tiny_model_config(compute_dtype="float16")
    net, trainer = _build(cfg)
    batch = _batch(cfg, 4, 0)
    res = [trainer.step([batch]) for _ in range(2)]
    assert all(math.isfinite(r.loss) and not r.overflow for r in res)
    assert res[1].loss < res[0].loss + 0.05
    assert all(p.dtype == ms.float32 for p in trainer.cell.get_parameters() if p.name.startswith(("adam_", "lm.")))
    net32, _ = _build(tiny_model_config())
    assert float(net32(*batch).asnumpy()) == pytest.approx(res[0].loss, abs=2e-2)


def test_fused_and_reference_steps_hold_the_same_state():
    """Same Parameters by name (weights, AdamW moments and step, loss scale): a checkpoint of
    one kernel set loads into the other."""
    names = {}
    for kernels in ("fused", "reference"):
        _, trainer = _build(tiny_model_config(kernels=kernels))
        got = [p.name for p in trainer.cell.get_parameters()]
        assert len(got) == len(set(got)), kernels
        names[kernels] = sorted(got)
    assert names["fused"] == names["reference"]
    assert any(n.startswith("adam_m.") for n in names["fused"]) and "global_step" in names["fused"]
