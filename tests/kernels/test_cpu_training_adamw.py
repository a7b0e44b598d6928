"""FusedAdamW (one C++ launch over all parameters) against `nn.AdamWeightDecay` and float64 NumPy
over several steps: eps 1e-8, two decay groups, loss-scale unscale with global-norm clipping, an
overflow step that must change nothing, bias correction, fp16 gradients and fp16 weight copies.
(The update inside a training graph: test_cpu_training_graph.py.)"""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from cpu_training_testing import ISAS, fused_cell, pynative
from pangu_ms.kernels.cpu_training import FusedAdamW, GradSquaredNorm

# odd sizes (vector tails), and one parameter over the kernel's 32K-element piece
SHAPES = {"embedding": (300, 130), "dense.weight": (37, 53), "dense.bias": (53,), "ln.gamma": (53,),
          "ln.beta": (53,), "scalar_like": (1,)}
B1, B2, EPS, WD, LR = 0.9, 0.95, 1e-8, 0.1, 3e-3
SCALE, CLIP = 1024.0, 1.0

pytestmark = pytest.mark.usefixtures("pynative")


def _decays(name: str) -> bool:
    return not name.endswith((".bias", ".gamma", ".beta"))


def _params(seed: int) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    return [Parameter(Tensor(rng.normal(size=s).astype(np.float32)), name=n) for n, s in SHAPES.items()]


class _Apply(nn.Cell):
    """A holder that leaves the parameter names alone (as the training step's cells do)."""

    def __init__(self, opt):
        super().__init__(auto_prefix=False)
        self.opt = opt

    def construct(self, *args):
        return self.opt(*args)


def _numpy_adamw(state, grads, factor, lr, step, *, bias_correction=False):
    """One step on float64 copies: state = list of (p, m, v, decay)."""
    out = []
    for (p, m, v, decay), g in zip(state, grads):
        g = g.astype(np.float64) * factor
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        mh, vh = (m / (1 - B1 ** step), v / (1 - B2 ** step)) if bias_correction else (m, v)
        out.append((p - lr * (mh / (np.sqrt(vh) + EPS) + decay * p), m, v, decay))
    return out


def _scaled_grads(rng, step):
    """Loss-scaled gradients, tiny ones included (eps 1e-8 matters there); step 3 overflows."""
    grads = []
    for i, s in enumerate(SHAPES.values()):
        g = rng.normal(size=s) * (10.0 ** -(i % 4)) * SCALE
        if step == 3 and i == 1:
            g.flat[5] = np.inf
        grads.append(g.astype(np.float32))
    return grads


def _factor(grads):
    """What the training step passes: 1 / scale times the clip factor; overflow if not finite."""
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)) / SCALE
    return (1.0 / SCALE) * CLIP / max(norm, CLIP), not np.isfinite(norm)


@pytest.mark.parametrize("isa", ISAS)
def test_matches_adam_weight_decay_and_numpy_over_steps_with_an_overflow(isa):
    fused_params, ref_params, ms_params = _params(0), _params(0), _params(0)
    fused = _Apply(fused_cell(FusedAdamW, fused_params, beta1=B1, beta2=B2, eps=EPS, weight_decay=WD, decay=_decays,
                              isa=isa))
    ref = _Apply(FusedAdamW(ref_params, beta1=B1, beta2=B2, eps=EPS, weight_decay=WD, decay=_decays, fused=False))
    groups = [{"params": [p for p in ms_params if _decays(p.name)], "weight_decay": WD},
              {"params": [p for p in ms_params if not _decays(p.name)], "weight_decay": 0.0},
              {"order_params": ms_params}]
    adam = _Apply(nn.AdamWeightDecay(groups, learning_rate=LR, beta1=B1, beta2=B2, eps=EPS))
    state = [(p.asnumpy().astype(np.float64), 0.0, 0.0, WD if _decays(p.name) else 0.0) for p in fused_params]
    rng = np.random.default_rng(7)
    for step in range(1, 7):
        grads = _scaled_grads(rng, step)
        factor, overflow = _factor(grads)
        assert overflow == (step == 3)
        before = [t.asnumpy().copy() for t in (*fused.opt.parameters, *fused.opt.moments1, *fused.opt.moments2)]
        args = (tuple(Tensor(g) for g in grads), Tensor(np.float32(factor)), Tensor(overflow), Tensor(np.float32(LR)),
                Tensor(np.int32(step)))
        assert bool(fused(*args).asnumpy()) is (not overflow)
        assert bool(ref(*args).asnumpy()) is (not overflow)
        after = [t.asnumpy() for t in (*fused.opt.parameters, *fused.opt.moments1, *fused.opt.moments2)]
        if overflow:  # nothing written, bit for bit
            assert all(np.array_equal(a, b) for a, b in zip(before, after))
            continue
        assert not any(np.array_equal(a, b) for a, b in zip(before[:len(SHAPES)], after[:len(SHAPES)]))
        adam(tuple(Tensor((g * np.float32(factor)).astype(np.float32)) for g in grads))
        state = _numpy_adamw(state, grads, factor, LR, step)
    for i, (pf, pr, pm) in enumerate(zip(fused_params, ref_params, ms_params)):
        want = state[i][0]
        np.testing.assert_allclose(pf.asnumpy(), want, rtol=1e-5, atol=1e-6, err_msg=pf.name)
        np.testing.assert_allclose(pr.asnumpy(), want, rtol=1e-5, atol=1e-6, err_msg=pr.name)
        np.testing.assert_allclose(pm.asnumpy(), want, rtol=1e-5, atol=1e-6, err_msg=pm.name)
        np.testing.assert_allclose(fused.opt.moments1[i].asnumpy(), state[i][1], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(fused.opt.moments2[i].asnumpy(), state[i][2], rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(fused.opt.moments2[i].asnumpy(), adam.opt.moments2[i].asnumpy(), rtol=1e-5,
                                   atol=1e-12)
    assert [m.name for m in fused.opt.moments1] == [f"adam_m.{n}" for n in SHAPES]


@pytest.mark.parametrize("isa", ISAS)
def test_bias_correction_fp16_gradients_and_fp16_copies(isa):
    params = _params(1)
    copies = [Parameter(Tensor(np.zeros(s, np.float16)), name=f"fp16.{n}", requires_grad=False)
              for n, s in SHAPES.items()]
    opt = _Apply(fused_cell(FusedAdamW, params, beta1=B1, beta2=B2, eps=EPS, weight_decay=WD, decay=_decays,
                            bias_correction=True, fp16_copies=copies, isa=isa))
    ref_params = _params(1)
    ref_copies = [Parameter(Tensor(np.zeros(s, np.float16)), name=f"ref16.{n}", requires_grad=False)
                  for n, s in SHAPES.items()]
    ref = _Apply(FusedAdamW(ref_params, beta1=B1, beta2=B2, eps=EPS, weight_decay=WD, decay=_decays,
                            bias_correction=True, fp16_copies=ref_copies, fused=False))
    state = [(p.asnumpy().astype(np.float64), 0.0, 0.0, WD if _decays(p.name) else 0.0) for p in params]
    rng = np.random.default_rng(8)
    for step in range(1, 5):
        grads = [(rng.normal(size=s) * 30).astype(np.float16) for s in SHAPES.values()]  # fp16, loss-scaled
        args = (tuple(Tensor(g) for g in grads), Tensor(np.float32(1 / 30)), Tensor(False), Tensor(np.float32(LR)),
                Tensor(np.int32(step)))
        opt(*args)
        ref(*args)
        state = _numpy_adamw(state, grads, 1 / 30, LR, step, bias_correction=True)
    for p, c, rp, rc, st in zip(params, copies, ref_params, ref_copies, state):
        np.testing.assert_allclose(p.asnumpy(), st[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rp.asnumpy(), st[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(c.asnumpy(), p.asnumpy().astype(np.float16))  # the same pass wrote them
        np.testing.assert_array_equal(rc.asnumpy(), rp.asnumpy().astype(np.float16))


@pytest.mark.parametrize("isa", ISAS)
def test_grad_squared_norm_matches_numpy_and_propagates_inf_and_nan(isa):
    rng = np.random.default_rng(9)
    grads = [(rng.normal(size=s) * 10.0 ** -(i % 3)).astype(np.float32) for i, s in enumerate(SHAPES.values())]
    grads[2] = grads[2].astype(np.float16)  # mixed dtypes in one launch
    want = sum((g.astype(np.float64) ** 2).sum() for g in grads)
    fused, ref = fused_cell(GradSquaredNorm, isa=isa), GradSquaredNorm(fused=False)
    for cell in (fused, ref):
        got = cell(tuple(Tensor(g) for g in grads))
        assert got.shape == () and got.dtype == ms.float32
        np.testing.assert_allclose(float(got.asnumpy()), want, rtol=1e-6)
    for bad, expect in ((np.inf, np.isinf), (np.nan, np.isnan)):
        spoiled = [g.copy() for g in grads]
        spoiled[0].flat[35000] = bad  # in the second 32K piece of the first parameter
        assert expect(float(fused(tuple(Tensor(g) for g in spoiled)).asnumpy()))


def test_constructor_errors():
    with pytest.raises(ValueError, match="fp32 master weights"):
        FusedAdamW([Parameter(Tensor(np.zeros(3, np.float16)), name="h")])
    with pytest.raises(ValueError, match="2 flags for 1 parameters"):
        FusedAdamW([Parameter(Tensor(np.zeros(3, np.float32)), name="p")], decay=[True, False])
    with pytest.raises(ValueError, match="fp16_copies"):
        FusedAdamW([Parameter(Tensor(np.zeros(3, np.float32)), name="q")],
                   fp16_copies=[Parameter(Tensor(np.zeros(4, np.float16)), name="q16")])
