"""Helpers of the CPU training-kernel tests (`test_cpu_training_*.py`; not a test module).

A fused Cell that fell back to its reference would make every fused-versus-reference test pass
without testing anything, so `fused_cell` fails the test instead (CI must catch a missing fused
path); the AVX-512 cases are skipped only on a CPU without AVX-512, where that path cannot run.

The numerical sweeps run in PyNative mode (`pynative`): the kernels are the same, and each case
then costs milliseconds instead of a graph compile of seconds. `test_cpu_training_graph.py` runs
every kernel, and the optimizer inside a training step, in GRAPH_MODE, the mode training uses.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from pangu_ms.kernels.build import isa_supported
from pangu_ms.kernels.cpu_training import cpu_training_library

ISAS = ["avx2", pytest.param("avx512", marks=pytest.mark.skipif(
    not isa_supported("avx512"), reason="this CPU has no AVX-512 (F/BW/VL/DQ): it runs the AVX2 path"))]
"""Both code paths of the library, as a pytest parameter list."""


@pytest.fixture()
def pynative():
    """PyNative mode for one test (the suite's default, GRAPH_MODE, is restored after it)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def fused_cell(cls, *args, **kwargs):
    """cls(*args, fused=True, **kwargs), failing the test unless the C++ kernel really runs."""
    cell = cls(*args, fused=True, **kwargs)
    if not cell.fused:
        pytest.fail(f"{cls.__name__}: the C++ training kernels did not build here (cpu_training_library() is "
                    f"{cpu_training_library()!r}; the warning logged above says why): install g++ on an x86-64 "
                    "CPU with AVX2, FMA and F16C")
    return cell


def f16_round(a: np.ndarray) -> np.ndarray:
    """a rounded to fp16 and back to float64: the values an fp16 kernel input holds."""
    return a.astype(np.float16).astype(np.float64)


def assert_close(got, want, dtype, *, scale: float = 1.0, rtol32: float = 2e-5, rtol16: float = 2e-3):
    """got (a Tensor or array) equals the float64 `want` within the rounding of `dtype` outputs:
    relative `rtol` of each value plus the same fraction of `scale` (the size of the values, for
    entries that cancel to near 0)."""
    got = got.asnumpy() if hasattr(got, "asnumpy") else got
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    got = got.astype(np.float64)
    assert np.isfinite(got).all(), "non-finite values in the kernel output"
    rtol = rtol16 if np.dtype(dtype) == np.float16 else rtol32
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def forward_and_vjp(cell):
    """One graph computing (cell(*inputs), gradients of sum(cell(*inputs) * dy) w.r.t. every
    input): `forward_and_vjp(cell)(*inputs, dy)` -> (output, grads). One compile instead of two."""
    from mindspore import nn

    class _ForwardVjp(nn.Cell):
        def __init__(self):
            super().__init__()
            self.cell = cell
            self.grad = ms.ops.GradOperation(get_all=True, sens_param=True)

        def construct(self, *args):
            return self.cell(*args[:-1]), self.grad(self.cell)(*args)

    return _ForwardVjp()
