"""Attention of one new token per row against its key/value cache, as one kernel.

Notation: B rows, N heads, D head dim, H = N*D, M cache slots.

A decoding step's attention is five small ops per layer in MindSpore (scale, q k^T, bias add,
softmax, p v) plus the bias built from the slot and the padding; each launch costs more than
its arithmetic. The C++ kernel (`DecodeAttention` in `kernels/cpu/gemv_avx2.cc`) does it in one
pass per (row, head) and reads the slot and padding directly. `fused=False` is the reference
composition of MindSpore ops; the backward (`bprop`, MatMul ops) serves both, and tests compare
fused and reference forward and backward.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import operations as P

from pangu_ms.kernels.build import cpu_kernel_library

_BMM_NT = P.BatchMatMul(transpose_b=True)
_BMM_TN = P.BatchMatMul(transpose_a=True)
_BMM = P.BatchMatMul()
_SOFTMAX = P.Softmax(-1)

MASK_VALUE = -10000.0
"""The additive attention bias of a key a query may not see (PanGu-alpha's value; its softmax
weight, exp(-1e4) relative to a seen key, is 0 in fp32)."""


def mask_bias(may_attend, sub=ops.sub, mul=ops.mul):
    """may_attend (bool, or 1.0 attend / 0.0 blocked; any shape) -> additive fp32 bias of the
    same shape: 0 where a key may be seen, `MASK_VALUE` where not. The one masking rule of the
    model (`PanguAlpha.attention_bias`), the decoder and these kernels; `sub`, `mul` are the ops
    it runs (the model passes its named primitives, which a shard plan addresses)."""
    return mul(sub(1.0, may_attend.astype(ms.float32)), MASK_VALUE)


def window_bias(query_slots, key_slots, pad_len):
    """Additive bias [B, 1, Q, K] for left-padded rows: row b's query at slot query_slots[i] may
    see the keys at slots key_slots[j] with pad_len[b] <= key_slots[j] <= query_slots[i]."""
    causal = key_slots.reshape(1, 1, 1, -1) <= query_slots.reshape(1, 1, -1, 1)
    real = key_slots.reshape(1, 1, 1, -1) >= pad_len.reshape(-1, 1, 1, 1)
    return mask_bias(ops.logical_and(causal, real))  # [B, 1, Q, K]


def _attention_bprop(q, k, v, slot, pad_len, out, dout):
    """Gradients of ctx = softmax(q k^T / sqrt(D) + bias) v for q [B, H], k, v [B, N, M, D]."""
    b, n, m, d = k.shape
    scale = 1.0 / math.sqrt(d)
    qh = q.reshape(b, n, 1, d) * scale  # [B, N, 1, D]
    bias = window_bias(slot.reshape(1), ops.arange(m, dtype=ms.int32), pad_len)  # [B, 1, 1, M]
    probs = _SOFTMAX(_BMM_NT(qh, k) + bias)  # [B, N, 1, M]
    dy = dout.reshape(b, n, 1, d)
    d_probs = _BMM_NT(dy, v)  # [B, N, 1, M]
    d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdims=True))
    d_q = (_BMM(d_scores, k) * scale).reshape(b, n * d)
    return d_q, _BMM_TN(d_scores, qh), _BMM_TN(probs, dy), ops.zeros_like(slot), ops.zeros_like(pad_len)


def _attention_shape(q, k, v, slot, pad_len):
    return [k[0], k[1] * k[3]]


def _same_dtype(q, *rest):
    return q


class DecodeAttentionKernel(nn.Cell):
    """ctx = softmax(q k^T / sqrt(D) + bias) v for one query per row.

    `construct(q [B, H] (not scaled), k, v [B, N, M, D] (already holding the new token),
    slot [] int32, pad_len [B] int32) -> ctx [B, H]` fp32; the bias lets row b see slots
    pad_len[b]..slot (`MASK_VALUE` elsewhere, which the kernel skips: exp gives 0 in fp32).
    `out_shape` [B, H] as in `LinearKernel`.
    """

    def __init__(self, *, max_length: int, head_dim: int, fused: bool = True,
                 out_shape: tuple[int, int] | None = None):
        super().__init__()
        lib = cpu_kernel_library() if fused else None
        self.fused = lib is not None
        self.scale = 1.0 / math.sqrt(head_dim)
        self.slots = Tensor(np.arange(max_length, dtype=np.int32))  # [M]
        if self.fused:
            shape, dtype = (list(out_shape), ms.float32) if out_shape else (_attention_shape, _same_dtype)
            self.kernel = ops.Custom(f"{lib}:DecodeAttention", out_shape=shape, out_dtype=dtype, func_type="aot",
                                     bprop=_attention_bprop)

    def construct(self, q, k, v, slot, pad_len):
        if self.fused:
            return self.kernel(q, k, v, slot, pad_len)
        b, n, _, d = k.shape
        qh = q.reshape(b, n, 1, d) * self.scale  # [B, N, 1, D]
        probs = _SOFTMAX(_BMM_NT(qh, k) + window_bias(slot.reshape(1), self.slots, pad_len))  # [B, N, 1, M]
        return _BMM(probs, v).reshape(b, n * d)  # [B, H]


def slot_index_parts(batch_size: int, heads: int) -> tuple[Tensor, Tensor]:
    """(base [B, N, 3], axis [3]) int32: `base + slot * axis` are the (b, n, slot) coordinates of
    one slot of a [B, N, M, D] cache, the index of a `ScatterNdUpdate` writing it."""
    rows = np.zeros((batch_size, heads, 3), np.int32)  # (b, n, slot=0)
    rows[..., 0] = np.arange(batch_size)[:, None]
    rows[..., 1] = np.arange(heads)[None, :]
    return Tensor(rows), Tensor(np.array([0, 0, 1], np.int32))


class CacheWriteKernel(nn.Cell):
    """Write one slot of a layer's K and V caches in place: k_cache[:, :, slot] = k_new (same for v).

    `construct(k_cache, v_cache [B, N, M, D] Parameters, k_new, v_new [B, N, D], slot [] int32)`
    -> a token [1] int32 to order later reads after the write (`ops.depend`). Inference only
    (no backward). The reference is two `ScatterNdUpdate`s, which on CPU copy the whole cache
    per call (O(M) per token); the C++ kernel (`WriteSlot`) writes B*N rows of D floats. The
    operator is marked `side_effect_mem`, so MindSpore orders it among the Parameter reads and
    writes of the graph as it does `Assign`.
    """

    def __init__(self, *, batch_size: int, heads: int, fused: bool = True):
        super().__init__()
        lib = cpu_kernel_library() if fused else None
        self.fused = lib is not None
        self.base, self.slot_axis = slot_index_parts(batch_size, heads)
        self.scatter = P.ScatterNdUpdate()
        if self.fused:
            self.kernel = ops.Custom(f"{lib}:WriteSlot", out_shape=[1], out_dtype=ms.int32, func_type="aot")
            self.kernel.add_prim_attr("side_effect_mem", True)

    def construct(self, k_cache, v_cache, k_new, v_new, slot):
        if self.fused:
            return self.kernel(k_cache, v_cache, k_new, v_new, slot)
        index = self.base + slot * self.slot_axis  # [B, N, 3]: (b, n, slot)
        k = self.scatter(k_cache, index, k_new)
        v = self.scatter(v_cache, index, v_new)
        return ops.depend(slot.reshape(1), (k, v))
