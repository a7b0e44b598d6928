"""The one-token attention kernel equals its reference composition and NumPy, forward and backward."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from pangu_ms.kernels import CacheWriteKernel, DecodeAttentionKernel
from pangu_testing import require_cpu_kernels, vjp_cell

B, N, M, D = 3, 2, 10, 8
RNG = np.random.default_rng(2)
Q = RNG.normal(size=(B, N * D)).astype(np.float32)
K = RNG.normal(size=(B, N, M, D)).astype(np.float32)
V = RNG.normal(size=(B, N, M, D)).astype(np.float32)
PAD = np.array([0, 3, 6], np.int32)  # left padding per row
SLOT = 6  # the new token's slot; row 2 sees exactly one key


def _numpy_attention(q, k, v, slot, pad):
    out = np.zeros((B, N, D))
    for b in range(B):
        for n in range(N):
            keys = slice(pad[b], slot + 1)
            s = k[b, n, keys] @ q[b].reshape(N, D)[n] / np.sqrt(D)
            p = np.exp(s - s.max())
            out[b, n] = (p / p.sum()) @ v[b, n, keys]
    return out.reshape(B, N * D)


def _kernel(fused: bool) -> DecodeAttentionKernel:
    if fused:
        require_cpu_kernels()
    kernel = DecodeAttentionKernel(max_length=M, head_dim=D, fused=fused)
    assert kernel.fused == fused  # the path asked for is the path that runs
    return kernel


def _args():
    return Tensor(Q), Tensor(K), Tensor(V), Tensor(SLOT, ms.int32), Tensor(PAD)


@pytest.mark.parametrize("fused", [True, False])
def test_forward_matches_numpy(fused):
    got = _kernel(fused)(*_args()).asnumpy()
    np.testing.assert_allclose(got, _numpy_attention(Q, K, V, SLOT, PAD), rtol=1e-5, atol=1e-5)


def test_fixed_out_shape_same_result():
    fixed = DecodeAttentionKernel(max_length=M, head_dim=D, fused=True, out_shape=(B, N * D))(*_args()).asnumpy()
    np.testing.assert_array_equal(fixed, _kernel(True)(*_args()).asnumpy())


def test_keys_outside_the_window_are_ignored():
    k, v = K.copy(), V.copy()
    k[:, :, SLOT + 1:] = 1e3  # future slots (stale cache rows)
    v[0, :, SLOT + 1:] = -1e3
    v[2, :, :PAD[2]] = 1e3  # row 2's padding slots
    got = _kernel(True)(Tensor(Q), Tensor(k), Tensor(v), Tensor(SLOT, ms.int32), Tensor(PAD)).asnumpy()
    np.testing.assert_allclose(got, _numpy_attention(Q, K, V, SLOT, PAD), rtol=1e-5, atol=1e-5)



def test_backward_fused_matches_reference():
    dy = Tensor(RNG.normal(size=(B, N * D)).astype(np.float32))
    fused = vjp_cell(_kernel(True))(*_args(), dy)
    ref = vjp_cell(_kernel(False))(*_args(), dy)
    for f, r in zip(fused[:3], ref[:3]):  # d q, d k, d v
        np.testing.assert_allclose(f.asnumpy(), r.asnumpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(fused[1].asnumpy()[:, :, SLOT + 1:]).max() == 0  # no gradient into masked keys


class _WriteThenAttend(nn.Cell):
    """The decoding step's use: write the new token's K/V at `slot`, then attend over the cache."""

    def __init__(self, fused: bool):
        super().__init__()
        zeros = np.zeros((B, N, M, D), np.float32)
        self.k = ms.Parameter(Tensor(zeros), name="k", requires_grad=False)
        self.v = ms.Parameter(Tensor(zeros), name="v", requires_grad=False)
        self.write = CacheWriteKernel(batch_size=B, heads=N, fused=fused)
        self.attend = _kernel(fused)

    def construct(self, q, k_new, v_new, slot, pad_len):
        token = self.write(self.k, self.v, k_new, v_new, slot)
        return self.attend(q, ms.ops.depend(self.k, token), ms.ops.depend(self.v, token), slot, pad_len)


def test_cache_write_in_place_then_attend_matches_reference():
    nets = {fused: _WriteThenAttend(fused) for fused in (True, False)}
    assert nets[True].write.fused and not nets[False].write.fused
    pad = Tensor(np.array([0, 2, 3], np.int32))
    for slot in range(3, 8):  # from 3 on every row sees at least its own key
        q, k_new, v_new = (Tensor(RNG.normal(size=s).astype(np.float32)) for s in ((B, N * D), (B, N, D), (B, N, D)))
        got = {f: n(q, k_new, v_new, Tensor(slot, ms.int32), pad).asnumpy() for f, n in nets.items()}
        np.testing.assert_allclose(got[True], got[False], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(nets[True].k.asnumpy()[:, :, slot], k_new.asnumpy())
    np.testing.assert_array_equal(nets[True].k.asnumpy(), nets[False].k.asnumpy())
    np.testing.assert_array_equal(nets[True].v.asnumpy(), nets[False].v.asnumpy())
    assert not nets[True].k.asnumpy()[:, :, 8:].any()  # other slots untouched
    assert not nets[True].k.asnumpy()[:, :, :3].any()
