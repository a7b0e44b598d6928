"""The CPU training-kernel library itself, and every kernel in GRAPH_MODE (the mode training runs
in; the numerical sweeps in the other test_cpu_training_* modules run in PyNative).

The library must build here (a failure, never a skip: CI has to notice a missing fused path),
export both code paths, choose the ISA from the CPU or PANGU_MS_CPU_ISA, size its thread pool
from the CPUs this process may use, and give bit-identical results with one thread or several.
"""
from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from cpu_training_testing import assert_close, forward_and_vjp, fused_cell
from pangu_ms.kernels import build
from pangu_ms.kernels.cpu_training import (AddLayerNorm, BiasActivation, FlashAttention, FusedAdamW,
                                           TiedHeadCrossEntropy, cpu_training_library, kernel_threads, training_isa)
from test_cpu_training_attention import _numpy_attention
from test_cpu_training_head import _numpy_head
from test_cpu_training_norm_act import ACT, _act_grad, _numpy_add_layer_norm

ENTRY_POINTS = ["BiasGeluFwd", "BiasGeluBwd", "BiasFastGeluFwd", "BiasFastGeluBwd", "AddLayerNormFwd",
                "AddLayerNormBwd", "FlashAttentionFwd", "FlashAttentionBwd", "TiedHeadCEFwd", "TiedHeadCELoss",
                "TiedHeadCEBwd", "FusedAdamW", "GradSquaredNorm"]
LR, B1, B2, EPS, WD = 3e-3, 0.9, 0.95, 1e-8, 0.1


def test_library_builds_into_the_kernel_cache_with_both_code_paths():
    lib = cpu_training_library()
    assert lib is not None, ("the C++ training kernels did not build (the warning logged above says why): "
                             "CI needs g++ and an x86-64 CPU with AVX2, FMA and F16C")
    assert Path(lib).parent == build.kernel_dir()  # the user cache, not the checkout
    loaded = ctypes.CDLL(lib)
    for name in ENTRY_POINTS:
        for isa in ("avx2", "avx512"):
            assert hasattr(loaded, f"{name}_{isa}"), f"{name}_{isa} not exported"
    assert not hasattr(loaded, "avx2")  # internals stay hidden (-fvisibility=hidden)


def test_isa_follows_the_cpu_and_the_override(monkeypatch):
    best = "avx512" if build.isa_supported("avx512") else "avx2"
    monkeypatch.delenv(build.ISA_ENV, raising=False)
    assert training_isa() == best
    assert fused_cell(BiasActivation, "gelu").isa == best
    monkeypatch.setenv(build.ISA_ENV, "avx2")
    assert training_isa() == "avx2" and fused_cell(BiasActivation, "gelu").isa == "avx2"
    monkeypatch.setenv(build.ISA_ENV, "sse4")
    with pytest.raises(ValueError, match="PANGU_MS_CPU_ISA='sse4' is not one of auto, avx2, avx512"):
        training_isa()
    if best == "avx2":
        monkeypatch.setenv(build.ISA_ENV, "avx512")
        with pytest.raises(ValueError, match="lacks"):
            training_isa()


def test_thread_pool_has_one_thread_per_usable_cpu():
    if "PANGU_MS_KERNEL_THREADS" in os.environ:
        assert kernel_threads() == int(os.environ["PANGU_MS_KERNEL_THREADS"])
    else:
        assert kernel_threads() == len(os.sched_getaffinity(0))


_DETERMINISM_SCRIPT = r'''
import sys
import numpy as np, mindspore as ms
from mindspore import Tensor
ms.set_context(mode=ms.PYNATIVE_MODE); ms.set_device("CPU")
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from cpu_training_testing import forward_and_vjp
from pangu_ms.kernels.cpu_training import *
rng = np.random.default_rng(0)
r = lambda *s: Tensor(rng.normal(size=s).astype(np.float32))
out = {"threads": np.array(kernel_threads())}
cases = {
    "attention": (FlashAttention(16), (r(2, 3, 150, 16), r(2, 3, 150, 16), r(2, 3, 150, 16),
                                       Tensor(np.cumsum(rng.random((2, 150)) < 0.05, 1).astype(np.int32)),
                                       r(2, 3, 150, 16))),
    "add_ln": (AddLayerNorm(), (r(200, 40), r(200, 40), r(40), r(40), (r(200, 40), r(200, 40)))),
    "bias_gelu": (BiasActivation("gelu"), (r(200, 70), r(70), r(200, 70))),
    "head": (TiedHeadCrossEntropy(6), (r(500, 24), r(300, 24), Tensor(rng.integers(0, 300, 500).astype(np.int32)),
                                       Tensor(np.float32(1.0)))),
}
for name, (cell, args) in cases.items():
    o, g = forward_and_vjp(cell)(*args)
    for i, t in enumerate((o,) + tuple(g) if not isinstance(o, tuple) else o + tuple(g)):
        out[f"{name}{i}"] = t.asnumpy()
np.savez(sys.argv[1], **out)
'''


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    """The same kernels in processes with 1 and 3 threads (3 > this machine's cores is fine)
    give identical bits: task splits depend on the shapes only, and partial sums are added in
    a fixed order."""
    script = tmp_path / "run.py"
    script.write_text(_DETERMINISM_SCRIPT)
    here, tests = Path(__file__).parent, Path(__file__).parents[1]
    results = []
    for threads in ("1", "3"):
        out = tmp_path / f"t{threads}.npz"
        env = {**os.environ, "PANGU_MS_KERNEL_THREADS": threads, "GLOG_v": "3"}
        done = subprocess.run([sys.executable, str(script), str(out), str(here), str(tests)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(dict(np.load(out)))
    assert int(results[0].pop("threads")) == 1 and int(results[1].pop("threads")) == 3
    assert results[0].keys() == results[1].keys() and len(results[0]) > 15
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_unbuildable_library_warns_once_and_cells_fall_back(monkeypatch, caplog):
    monkeypatch.setattr(build, "kernel_source", lambda rel: None)
    build.cpu_training_library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="pangu_ms.kernels.build"):
            cells = [FlashAttention(8), AddLayerNorm(), TiedHeadCrossEntropy(6)]
        assert not any(c.fused for c in cells)
        warnings = [r for r in caplog.records if "training kernels off" in r.getMessage()]
        assert len(warnings) == 1 and "cpu/training.cc is not in this install" in warnings[0].getMessage()
    finally:
        build.cpu_training_library.cache_clear()
    monkeypatch.undo()
    assert cpu_training_library() is not None


# ---------------------------------------------------------------- every kernel in GRAPH_MODE

@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 2, 70, 16)])
def test_attention_in_graph_mode(shape):
    rng = np.random.default_rng(5)
    q, k, v, dout = (rng.normal(size=shape).astype(np.float32) for _ in range(4))
    doc = np.cumsum(rng.random(shape[::2][:1] + (shape[2],)) < 0.1, axis=1).astype(np.int32)
    want = _numpy_attention(*(a.astype(np.float64) for a in (q, k, v)), doc, dout.astype(np.float64))
    for cell in (fused_cell(FlashAttention, shape[-1]), FlashAttention(shape[-1], fused=False)):
        out, grads = forward_and_vjp(cell)(*map(Tensor, (q, k, v, doc, dout)))
        assert_close(out, want[0], np.float32, scale=np.abs(want[0]).max())
        for got, w in zip(grads[:3], want[1:]):
            assert_close(got, w, np.float32, scale=max(np.abs(w).max(), 1.0), rtol32=3e-5)


def test_norm_act_and_head_in_graph_mode():
    rng = np.random.default_rng(6)
    x, bias, dy = rng.normal(size=(37, 53)).astype(np.float32), rng.normal(size=53).astype(np.float32), \
        rng.normal(size=(37, 53)).astype(np.float32)
    out, (dx, db) = forward_and_vjp(fused_cell(BiasActivation, "gelu"))(Tensor(x), Tensor(bias), Tensor(dy))
    z = x.astype(np.float64) + bias
    assert_close(out, ACT["gelu"](z), np.float32)
    assert_close(dx, dy * _act_grad("gelu", z), np.float32)
    res, g, b = (rng.normal(size=s).astype(np.float32) for s in ((37, 53), (53,), (53,)))
    (s_out, y_out), _ = forward_and_vjp(fused_cell(AddLayerNorm))(*map(Tensor, (x, res, g, b)),
                                                                   (Tensor(dy), Tensor(dy)))
    s_want, y_want = _numpy_add_layer_norm(x.astype(np.float64), res, g, b, 1e-5)
    assert_close(s_out, s_want, np.float32)
    assert_close(y_out, y_want, np.float32, scale=3.0, rtol32=1e-5)
    h, table = rng.normal(size=(37, 24)), rng.normal(size=(101, 24)) / 5
    labels = rng.integers(0, 101, size=37).astype(np.int32)
    loss, dh, dt = _numpy_head(h, table, labels, 6, 2.0)
    out, grads = forward_and_vjp(fused_cell(TiedHeadCrossEntropy, 6))(
        Tensor(h.astype(np.float32)), Tensor(table.astype(np.float32)), Tensor(labels), Tensor(np.float32(2.0)))
    assert_close(out, np.float64(loss), np.float32, rtol32=2e-6)
    assert_close(grads[0], dh, np.float32, scale=np.abs(dh).max())
    assert_close(grads[1], dt, np.float32, scale=np.abs(dt).max())


# ---------------------------------------------------------------- the optimizer inside a training step

class _Net(nn.Cell):
    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = Parameter(Tensor(rng.normal(size=(7, 5)).astype(np.float32)), name="w")
        self.b = Parameter(Tensor(rng.normal(size=5).astype(np.float32)), name="b")

    def construct(self, x):
        return ((ops.matmul(x, self.w) + self.b) ** 2).mean()


class _Step(nn.Cell):
    """loss, then gradients, then the optimizer, in one graph (the update reads and writes the
    Parameters the forward and backward just read)."""

    def __init__(self, net, opt, fused_interface: bool):
        super().__init__(auto_prefix=False)
        self.net, self.opt, self.fused_interface = net, opt, fused_interface
        self.weights = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x):
        loss = self.net(x)
        grads = self.grad(self.net, self.weights)(x)
        if self.fused_interface:
            done = self.opt(grads, ops.ones((), ms.float32), ops.zeros((), ms.bool_), ops.ones((), ms.float32) * LR,
                            ops.ones((), ms.int32))
        else:
            done = self.opt(grads)
        return ops.depend(loss, done)


def test_update_inside_a_training_graph_follows_adam_weight_decay():
    x = Tensor(np.random.default_rng(3).normal(size=(4, 7)).astype(np.float32))
    fused_net, ms_net = _Net(0), _Net(0)
    fused = _Step(fused_net, fused_cell(FusedAdamW, fused_net.trainable_params(), beta1=B1, beta2=B2, eps=EPS,
                                        weight_decay=WD, decay=[True, False]), True)  # w decays, b does not
    groups = [{"params": [ms_net.w], "weight_decay": WD}, {"params": [ms_net.b], "weight_decay": 0.0},
              {"order_params": ms_net.trainable_params()}]
    plain = _Step(ms_net, nn.AdamWeightDecay(groups, learning_rate=LR, beta1=B1, beta2=B2, eps=EPS), False)
    losses = [(float(fused(x).asnumpy()), float(plain(x).asnumpy())) for _ in range(6)]
    np.testing.assert_allclose(*zip(*losses), rtol=1e-6)
    assert losses[-1][0] < losses[0][0]
    np.testing.assert_allclose(fused_net.w.asnumpy(), ms_net.w.asnumpy(), rtol=1e-6, atol=1e-7)
    assert fused_net.w.name == "w"  # names untouched: checkpoints keep their keys
