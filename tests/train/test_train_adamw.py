"""The optimizer step against NumPy over several steps with the paper's settings (eps 1e-8,
betas 0.9 / 0.95, decay 0.1 outside LayerNorm and biases, global-norm clipping), the
warmup + cosine schedule's values, and the paper's defaults and initialisation.

The update runs through the real train step (`Trainer`: loss scale, unscale, clip, the
`AdamWeightDecay` kernel) on a loss whose gradients are chosen: loss = sum_p <p, G_p>, so
dloss/dp = G_p exactly, with G_p set per step, and of very different sizes per parameter
(one group's gradients are ~1e-8, where eps = 1e-8 decides the step size).
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from pangu_ms.config import ModelConfig, OptimizerConfig, ScheduleConfig, load_config
from pangu_ms.train.optimizer import WarmupCosineLR, build_optimizer, decays, lr_at
from pangu_ms.train.step import Trainer

STEPS = 6
OPT = OptimizerConfig(lr=1e-2, min_lr=1e-3, clip_norm=1.0, loss_scale=2.0 ** 10, loss_scale_window=1000)
SCHED = ScheduleConfig(warmup_steps=2)
# the schedule by hand: warmup lr*(t+1)/2, then min + (lr - min)/2 (1 + cos(pi (t - 2)/4))
LR_BY_HAND = [5e-3, 1e-2, 1e-2, 1e-3 + 4.5e-3 * (1 + math.cos(math.pi / 4)), 5.5e-3,
              1e-3 + 4.5e-3 * (1 - math.cos(math.pi / 4)), 1e-3, 1e-3]
SHAPES = {"dense.weight": (4, 3), "dense.bias": (3,), "norm.gamma": (3,), "norm.beta": (3,),
          "table.embedding_table": (5, 3)}
GRAD_SCALE = {"dense.weight": 1.0, "dense.bias": 0.1, "norm.gamma": 1e-3, "norm.beta": 1e-2,
              "table.embedding_table": 1e-8}  # ~1e-8: sqrt(v) is below eps there


class _Part(nn.Cell):
    def __init__(self, names: dict[str, np.ndarray]):
        super().__init__()
        for leaf, value in names.items():
            setattr(self, leaf, Parameter(Tensor(value), name=leaf))


class ChosenGradients(nn.Cell):
    """loss = sum_p <p, G_p> over the parameters of SHAPES; inputs are the G_p (same order)."""

    def __init__(self, init: dict[str, np.ndarray]):
        super().__init__()
        parts: dict[str, dict[str, np.ndarray]] = {}
        for name, value in init.items():
            cell, leaf = name.split(".")
            parts.setdefault(cell, {})[leaf] = value
        self.dense, self.norm, self.table = (_Part(parts[c]) for c in ("dense", "norm", "table"))

    def construct(self, gw, gb, gg, gbeta, gt):
        return ((self.dense.weight * gw).sum() + (self.dense.bias * gb).sum() + (self.norm.gamma * gg).sum()
                + (self.norm.beta * gbeta).sum() + (self.table.embedding_table * gt).sum())


def _gradients(rng: np.random.Generator, step: int) -> dict[str, np.ndarray]:
    g = {n: (rng.standard_normal(s) * GRAD_SCALE[n]).astype(np.float32) for n, s in SHAPES.items()}
    if step == 3:  # one step with a global norm below clip_norm: no clipping there
        g = {n: (x * np.float32(0.05)).astype(np.float32) for n, x in g.items()}
    return g


def numpy_adamw(w, grads, *, lr, beta1, beta2, eps, weight_decay, clip_norm, state):
    """One AdamW step in float64, as MindSpore's AdamWeightDecay (no bias correction)."""
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    factor = clip_norm / max(norm, clip_norm) if clip_norm > 0 else 1.0
    out = {}
    for name, g in grads.items():
        g = g.astype(np.float64) * factor
        m, v = state.get(name, (0.0, 0.0))
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        state[name] = (m, v)
        update = m / (np.sqrt(v) + eps) + (weight_decay * w[name] if decays(name) else 0.0)
        out[name] = w[name] - lr * update
    return out, norm


def _reference(init, all_grads, **override) -> tuple[dict, list[float]]:
    hp = dict(beta1=OPT.beta1, beta2=OPT.beta2, eps=OPT.eps, weight_decay=OPT.weight_decay, clip_norm=OPT.clip_norm)
    hp.update(override)
    w = {n: v.astype(np.float64) for n, v in init.items()}
    state: dict = {}
    norms = []
    for t, grads in enumerate(all_grads):
        w, norm = numpy_adamw(w, grads, lr=LR_BY_HAND[t], state=state, **hp)
        norms.append(norm)
    return w, norms


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(4)
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    net = ChosenGradients(init)
    assert sorted(p.name for p in net.trainable_params()) == sorted(SHAPES)
    trainer = Trainer(net, build_optimizer(net.trainable_params(), OPT, SCHED, STEPS), OPT)
    all_grads, results = [], []
    for t in range(STEPS):
        grads = _gradients(rng, t)
        all_grads.append(grads)
        results.append(trainer.step([tuple(Tensor(grads[n]) for n in SHAPES)]))
    final = {p.name: p.asnumpy().astype(np.float64) for p in net.trainable_params()}
    return init, all_grads, results, final


def test_the_schedule_equals_the_hand_worked_values():
    sched = WarmupCosineLR(OPT, SCHED, STEPS)
    graph = [float(sched(Tensor(t, ms.int32)).asnumpy()) for t in range(STEPS + 2)]
    python = [lr_at(t, OPT, SCHED, STEPS) for t in range(STEPS + 2)]
    np.testing.assert_allclose(python, LR_BY_HAND, rtol=1e-12)
    np.testing.assert_allclose(graph, LR_BY_HAND, rtol=1e-6)
    constant = ScheduleConfig(warmup_steps=2, kind="constant")
    assert [lr_at(t, OPT, constant, STEPS) for t in range(5)] == [5e-3, 1e-2, 1e-2, 1e-2, 1e-2]
    later = ScheduleConfig(warmup_steps=2, decay_steps=2)  # cosine over 2 steps, then min_lr
    assert [lr_at(t, OPT, later, 100) for t in (2, 3, 4, 50)] == pytest.approx([1e-2, 5.5e-3, 1e-3, 1e-3])


def test_several_adamw_steps_equal_numpy(trained):
    init, all_grads, results, final = trained
    want, norms = _reference(init, all_grads)
    for t, (res, norm) in enumerate(zip(results, norms)):
        assert not res.overflow
        assert res.grad_norm == pytest.approx(norm, rel=1e-6), t
    assert norms[3] < OPT.clip_norm < min(norms[:3] + norms[4:])  # clipped on all steps but one
    for name in SHAPES:
        np.testing.assert_allclose(final[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("wrong", [dict(eps=1e-6), dict(eps=0.0), dict(beta2=0.999), dict(beta1=0.8),
                                   dict(weight_decay=0.0), dict(clip_norm=0.0)], ids=str)
def test_the_comparison_would_see_a_wrong_hyperparameter(trained, wrong):
    """The reference with one setting changed is far outside the tolerance above, so that test
    checks each of them (eps included: the 1e-8 gradients make it count)."""
    init, all_grads, _, final = trained
    off, _ = _reference(init, all_grads, **wrong)
    worst = max(float(np.abs(final[n] - off[n]).max() / (1e-7 + 1e-6 * np.abs(off[n]).max())) for n in SHAPES)
    assert worst > 100, f"{wrong}: only {worst:.1f}x the tolerance away"


def test_decay_groups_follow_the_parameter_names(trained):
    """LayerNorm gains/shifts and biases get no weight decay; matrices and tables do."""
    assert [decays(n) for n in SHAPES] == [True, False, False, False, True]
    opt = build_optimizer(ChosenGradients({n: np.zeros(s, np.float32) for n, s in SHAPES.items()}).trainable_params(),
                          OPT, SCHED, STEPS)
    groups = {p.name: float(wd.asnumpy()) if hasattr(wd, "asnumpy") else float(wd)
              for p, wd in zip(opt.parameters, opt.weight_decay)}
    assert groups == pytest.approx({"dense.weight": 0.1, "dense.bias": 0.0, "norm.gamma": 0.0, "norm.beta": 0.0,
                                    "table.embedding_table": 0.1}, rel=1e-6)


def test_the_paper_defaults():
    """Zeng et al. 2021: AdamW (0.9, 0.95), eps 1e-8, weight decay 0.1, clip 1.0, a dynamic loss
    scale from 2^32 (x2, window 1000), 2000 warmup steps then cosine, Normal(0.02) init; the
    shipped paper runs' learning rates 1e-4 (2.6B), 5e-5 (13B), 2e-5 (200B), fp16 compute."""
    opt, sched, model = OptimizerConfig(), ScheduleConfig(), ModelConfig()
    assert (opt.beta1, opt.beta2, opt.eps, opt.weight_decay, opt.clip_norm) == (0.9, 0.95, 1e-8, 0.1, 1.0)
    assert (opt.loss_scale, opt.loss_scale_factor, opt.loss_scale_window) == (2.0 ** 32, 2.0, 1000)
    assert (sched.warmup_steps, sched.kind, model.init_std, model.layernorm_eps) == (2000, "cosine", 0.02, 1e-5)
    built = build_optimizer([Parameter(Tensor(np.zeros(2, np.float32)), name="w")], opt, sched, 10)
    assert [float(x.asnumpy().reshape(-1)[0]) for x in (built.beta1, built.beta2, built.eps)] == \
        pytest.approx([0.9, 0.95, 1e-8], rel=1e-6)
    for run, lr in (("2.6b_512p", 1e-4), ("13b_1024p", 5e-5), ("200b_2048p", 2e-5)):
        job = load_config(f"ascend_configs/runs/pangu_alpha_{run}.yaml")
        assert (job.optimizer.lr, job.model.compute_dtype, job.optimizer.loss_scale) == (lr, "float16", 2.0 ** 32), run
        assert (job.optimizer.beta2, job.optimizer.eps, job.schedule.warmup_steps) == (0.95, 1e-8, 2000), run


def test_initialisation_std_and_the_scaled_output_projections():
    """Normal(0.02) everywhere, 0.02 / sqrt(2 L) on the attention and FFN output projections
    (L = num_layers, the query layer included); biases and LayerNorm shifts 0, gains 1."""
    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    layers = 8
    ms.set_seed(0)
    lm = PanguAlphaLM(ModelConfig(vocab_size=512, seq_length=64, num_layers=layers, hidden_size=128,
                                  ffn_hidden_size=512, num_heads=4, dropout=0.0))
    scaled = 0.02 / math.sqrt(2 * layers)
    seen = set()
    for name, p in lm.parameters_and_names():
        x = p.asnumpy().astype(np.float64)
        if name.endswith((".bias", ".beta")):
            assert not x.any(), name
        elif name.endswith(".gamma"):
            assert (x == 1).all(), name
        else:
            want = scaled if name.endswith(("linear_out.weight", "linear_fc2.weight")) else 0.02
            # the sample std of n >= 8192 normal draws is within 3% of sigma with overwhelming odds
            assert x.std() == pytest.approx(want, rel=0.03), (name, x.std(), want)
            assert abs(x.mean()) < 4 * want / math.sqrt(x.size), name
            seen.add("scaled" if want == scaled else "plain")
    assert seen == {"scaled", "plain"}
