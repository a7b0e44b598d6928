"""Training PanGu-Sigma: host-side expert state updates only the experts that received tokens
(the others keep weights and moments bit for bit), its AdamW equals MindSpore's on the experts
it updates, and the expert epsilon is the experts' own."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_model_config
from pangu_ms.config import DomainConfig, ExpertsConfig, JobConfig, OptimizerConfig, ScheduleConfig, TrainConfig
from pangu_ms.data.dataset import eod_reset
from pangu_ms.train.sigma import build_sigma_trainer, expert_parameters, touched_experts


def _job(host: bool) -> JobConfig:
    ex = ExpertsConfig(domains=[DomainConfig("a", 3), DomainConfig("b", 2)], num_sparse_layers=2,
                       host_expert_state=host, expert_eps=1e-12)
    return JobConfig(model=tiny_model_config(), experts=ex, train=TrainConfig(steps=10, global_batch_size=2),
                     optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-3, loss_scale=1.0),
                     schedule=ScheduleConfig(warmup_steps=0, kind="constant"))


def _batch(vocab, seq, tokens, domain):
    """Two rows of domain `domain` drawing their ids from `tokens` only (so few experts get any)."""
    rows = np.random.default_rng(3).choice(tokens, (2, seq + 1)).astype(np.int32)
    pos, doc = eod_reset(rows, 8)
    return Tensor(rows), Tensor(pos), Tensor(doc), Tensor(np.full(2, domain, np.int32))


def _one_expert_tokens(net):
    """Token ids that domain a routes to its expert 0 in every sparse layer."""
    tables = [c.route.asnumpy()[0] for _, c in net.cells_and_names() if hasattr(c, "route")]
    ok = np.all([t == 0 for t in tables], axis=0)
    ok[:10] = False  # keep clear of the special ids (pad 6, eod 8)
    return np.flatnonzero(ok)[:3].tolist()


def _state(trainer):
    _, experts = expert_parameters(trainer.net)
    return {p.name: p.asnumpy().copy() for p in experts}


def _trainer(host: bool, seed=5):
    ms.set_seed(seed)
    net, trainer = build_sigma_trainer(_job(host))
    return net, trainer


def test_host_state_lazy_update_keeps_untouched_experts_bitwise():
    net, trainer = _trainer(True)
    cfg = net.config
    batch = _batch(cfg.vocab_size, cfg.seq_length, _one_expert_tokens(net), 0)
    touched = touched_experts(net, batch[0].asnumpy(), batch[3].asnumpy())
    assert set(touched) == {"lm.backbone.blocks.1.ffn", "lm.backbone.query_layer.ffn"}
    for hit in touched.values():  # only domain a's expert 0 gets tokens; b's never from an a batch
        assert hit.tolist() == [True, False, False, False, False]
    before, m0 = _state(trainer), {k: v.copy() for k, v in trainer.host_adam.m.items()}
    for _ in range(2):
        trainer.step([batch])
    after = _state(trainer)
    for name, w in before.items():
        hit = touched[name.rsplit(".", 1)[0]]
        np.testing.assert_array_equal(after[name][~hit], w[~hit])  # weights bitwise unchanged
        np.testing.assert_array_equal(trainer.host_adam.m[name][~hit], m0[name][~hit])  # moments too
        np.testing.assert_array_equal(trainer.host_adam.v[name][~hit], 0.0)
        if name.endswith(("expert_w1", "expert_w2")):
            assert np.abs(after[name][hit] - w[hit]).max() > 0  # the touched experts did move


def test_host_adam_equals_device_adam_on_touched_experts_and_device_moves_the_rest():
    net_h, host = _trainer(True)
    net_d, device = _trainer(False)
    cfg = net_h.config
    for a, b in zip(net_h.trainable_params(), net_d.trainable_params()):  # same start
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    batch = _batch(cfg.vocab_size, cfg.seq_length, _one_expert_tokens(net_h), 0)
    touched = touched_experts(net_h, batch[0].asnumpy(), batch[3].asnumpy())
    start = _state(host)
    for _ in range(2):
        rh, rd = host.step([batch]), device.step([batch])
        assert rh.loss == pytest.approx(rd.loss, rel=1e-6)
    hs, ds = _state(host), _state(device)
    for name in hs:
        hit = touched[name.rsplit(".", 1)[0]]
        np.testing.assert_allclose(hs[name][hit], ds[name][hit], rtol=1e-5, atol=1e-7)
    # the device AdamW moves untouched experts on its second step (momentum; decay on weights)
    w1 = "lm.backbone.query_layer.ffn.expert_w1"
    assert np.abs(ds[w1][~touched["lm.backbone.query_layer.ffn"]] - start[w1][~touched[
        "lm.backbone.query_layer.ffn"]]).max() > 0


def test_expert_optimizer_has_its_own_epsilon():
    _, device = _trainer(False)
    eps = [float(o.eps.asnumpy().reshape(-1)[0]) for o in (device.optimizer.dense, device.optimizer.experts)]
    assert eps == pytest.approx([1e-8, 1e-12], rel=1e-6)
    names = [p.name for p in device.cell.get_parameters()]
    assert len(names) == len(set(names))  # two optimizers, one name per saved tensor
    _, host = _trainer(True)
    assert host.host_adam.eps == 1e-12
    assert float(host.optimizer.eps.asnumpy().reshape(-1)[0]) == pytest.approx(1e-8, rel=1e-6)
