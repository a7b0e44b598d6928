"""The op sets of the decoding graphs: one per graph, chosen when the decoder is built.

Notation: T rows of the call (B*S in the prompt graph, B in the step graph), B batch, S prompt
length, M cache slots, H hidden, F ffn width, N heads, D head dim, V vocab.

`DecoderCore` (`pangu_ms.infer.kv_cache`) writes the model's layer equations once, against this
interface; every op set implements it with the weights as inputs:

    linear(x [T, K], w [K, N], b [N]) -> x w + b [T, N]
    linear_gelu(x, w, b) -> gelu(x w + b)           linear_residual(x, w, b, r) -> r + x w + b
    norm(x [T, H], gamma, beta) -> LayerNorm(x)     head(h [T, H], table [V, H]) -> h table^T [T, V]
    begin(...) -> state: what every layer's attention needs (mask, write index), built once per graph
    attend(q, k, v [T, H], k_cache, v_cache [B, N, M, D], state) -> ctx [T, H], caches holding k, v

- `PromptOps`: compositions of plain ops (`pangu_ms.kernels.norm_act`, the reference
  `CoreAttention`); caches are the prompt's K/V followed by zeros.
- `StepOps`: one token per row; LayerNorm and the activation as single MindSpore kernels
  (`fused`), the rest reference, the new slot written with ScatterNdUpdate (in place) or
  TensorScatterUpdate.
- `CpuStepOps`: `StepOps` with the C++ kernels for the weight products, the tied head, the
  one-token attention and the in-place slot write (no mask built: the kernel masks itself).
  CPU only: never chosen for a model built for Ascend.
- On Ascend 910B with an fp16/bf16 model, the prompt graph attends with PromptFlashAttention
  and the step graph with IncreFlashAttention (`pangu_ms.kernels.ascend`); elsewhere on Ascend
  (910A, fp32) the reference ops.

The activation is the model's (`model.activation`: gelu or fast_gelu). Every op here is one
the graph runs: at one token per step the cost is the op count.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import operations as P

from pangu_ms.config import ModelConfig
from pangu_ms.kernels import (CacheWriteKernel, DecodeAttentionKernel, GeluKernel, LayerNormKernel, LinearGeluKernel,
                              LinearKernel, LinearResidualKernel, TiedHeadKernel, cpu_kernel_library,
                              slot_index_parts, window_bias)
from pangu_ms.kernels.reference import CoreAttention, compute_dtype


class ReferenceOps(nn.Cell):
    """The model's math with weights as inputs (`models.layers.Linear`: low-precision matmuls with
    fp32 results when the model computes in fp16/bf16), LayerNorm and the activation composed
    or, with `fused`, single MindSpore kernels; and the reference attention core (`CoreAttention`)."""

    def __init__(self, cfg: ModelConfig, *, max_length: int, fused: bool):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.low_precision = cfg.compute_dtype != "float32"
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.slots = Tensor(np.arange(max_length, dtype=np.int32))  # [M]
        self.layer_norm = LayerNormKernel(eps=cfg.layernorm_eps, fused=fused)
        self.gelu = GeluKernel(fused=fused, kind=cfg.activation)
        self.core = CoreAttention(cfg.head_dim, dtype=cfg.compute_dtype)
        self.matmul = P.MatMul()
        self.vocab_proj = P.MatMul(transpose_b=True)
        self.cast = P.Cast()

    def _compute(self, x):
        """x in the compute dtype (a cast only for fp16 models)."""
        if self.low_precision:
            return self.cast(x, self.dtype)
        return x

    def _mm(self, x, w, matmul):
        """x @ w (or w^T) in the compute dtype, result fp32."""
        if self.low_precision:
            return self.cast(matmul(self._compute(x), self._compute(w)), ms.float32)
        return matmul(x, w)

    def linear(self, x, w, b):
        return self._mm(x, w, self.matmul) + b

    def linear_gelu(self, x, w, b):
        return self.gelu(self.linear(x, w, b))

    def linear_residual(self, x, w, b, residual):
        return residual + self.linear(x, w, b)

    def norm(self, x, gamma, beta):
        return self.layer_norm(x, gamma, beta)

    def head(self, h, table):
        return self._mm(h, table, self.vocab_proj)

    def attention(self, q, k, v, bias):
        """q [B, N, Q, D] (not scaled), k, v [B, N, K, D] fp32, bias [B, 1, Q, K] -> ctx [B, N, Q, D] fp32."""
        return self.core(self._compute(q), self._compute(k), self._compute(v), bias)


class PromptOps(ReferenceOps):
    """The prompt graph: reference compositions (faster than the fused kernels from 32 tokens
    on), attention over the prompt, caches made of its K/V with zeros after slot S-1."""

    def __init__(self, cfg: ModelConfig, *, max_length: int, flash: bool = False):
        super().__init__(cfg, max_length=max_length, fused=False)
        self.max_length = max_length
        if flash:  # Ascend 910B: PromptFlashAttention in the compute dtype
            from pangu_ms.kernels.ascend import PromptFlashAttention

            self.core = PromptFlashAttention(cfg.num_heads, cfg.head_dim, self.dtype)
        self.transpose = P.Transpose()
        self.concat = P.Concat(axis=2)

    def _heads(self, x, b: int, s: int):
        """[B*S, H] -> [B, N, S, D]."""
        return self.transpose(x.reshape(b, s, self.heads, self.head_dim), (0, 2, 1, 3))

    def begin(self, pad_len, b: int, s: int):
        """-> (bias [B, 1, S, S]: causal over each row's real tokens, zeros [B, N, M-S, D])."""
        bias = window_bias(self.slots[:s], self.slots[:s], pad_len)
        return bias, ops.zeros((b, self.heads, self.max_length - s, self.head_dim), ms.float32)

    def attend(self, q, k, v, k_cache, v_cache, state):
        """q, k, v [B*S, H] -> ctx [B*S, H], caches [B, N, M, D] (the caches passed in are unused)."""
        bias, zeros = state
        b, s = bias.shape[0], bias.shape[-1]
        k, v = self._heads(k, b, s), self._heads(v, b, s)  # [B, N, S, D]
        ctx = self.attention(self._heads(q, b, s), k, v, bias)  # [B, N, S, D]
        ctx = self.transpose(ctx, (0, 2, 1, 3)).reshape(b * s, -1)  # [B*S, H]
        return ctx, self.concat((k, zeros)), self.concat((v, zeros))


class StepOps(ReferenceOps):
    """The step graph without C++ kernels: one token per row against the whole cache.

    `in_place`: the caches are Parameters and the new slot is written into them
    (ScatterNdUpdate); otherwise caches are values and the write returns new ones
    (TensorScatterUpdate, MindIR export)."""

    def __init__(self, cfg: ModelConfig, *, batch_size: int, max_length: int, fused: bool, in_place: bool,
                 flash: bool = False):
        super().__init__(cfg, max_length=max_length, fused=fused)
        self.in_place = in_place
        if flash:  # Ascend 910B: IncreFlashAttention in the compute dtype
            from pangu_ms.kernels.ascend import IncreFlashAttention

            self.core = IncreFlashAttention(cfg.num_heads, cfg.head_dim, self.dtype)
        self.index_base, self.slot_axis = slot_index_parts(batch_size, cfg.num_heads)  # [B, N, 3], [3]
        self.scatter_update = P.ScatterNdUpdate()
        self.tensor_scatter_update = P.TensorScatterUpdate()

    def begin(self, slot, pad_len):
        """-> (slot, pad_len, write index [B, N, 3] = (b, n, slot), bias [B, 1, 1, M])."""
        index = self.index_base + slot * self.slot_axis
        return slot, pad_len, index, window_bias(slot.reshape(1), self.slots, pad_len)

    def write(self, k_cache, v_cache, k, v, state):
        """Put k, v [B, N, D] at the step's slot of the caches [B, N, M, D] -> the caches."""
        if self.in_place:
            return self.write_in_place(k_cache, v_cache, k, v, state)
        _, _, index, _ = state
        return self.tensor_scatter_update(k_cache, index, k), self.tensor_scatter_update(v_cache, index, v)

    def write_in_place(self, k_cache, v_cache, k, v, state):
        _, _, index, _ = state
        return self.scatter_update(k_cache, index, k), self.scatter_update(v_cache, index, v)

    def attend_cache(self, q, k_cache, v_cache, state):
        """q [B, H] against caches [B, N, M, D] that hold the new token -> ctx [B, H]."""
        b = q.shape[0]
        _, _, _, bias = state
        return self.attention(q.reshape(b, self.heads, 1, self.head_dim), k_cache, v_cache, bias).reshape(b, -1)

    def attend(self, q, k, v, k_cache, v_cache, state):
        """q, k, v [B, H] (one token: [B, H] is [B, N, 1, D] as is) -> ctx [B, H], updated caches."""
        b = q.shape[0]
        new_k, new_v = k.reshape(b, self.heads, self.head_dim), v.reshape(b, self.heads, self.head_dim)
        k_cache, v_cache = self.write(k_cache, v_cache, new_k, new_v, state)
        return self.attend_cache(q, k_cache, v_cache, state), k_cache, v_cache


class CpuStepOps(StepOps):
    """The step graph with the C++ kernels (`pangu_ms.kernels`, fp32): weight products fused with
    their bias, GELU and residual adds, the tied head, the one-token attention (it masks from
    slot and pad_len, so no bias is built) and, in place, the slot write."""

    def __init__(self, cfg: ModelConfig, *, batch_size: int, max_length: int, in_place: bool):
        super().__init__(cfg, batch_size=batch_size, max_length=max_length, fused=True, in_place=in_place)
        b, h, f = batch_size, cfg.hidden_size, cfg.ffn_hidden_size
        self.cpu_linear = LinearKernel(out_shape=(b, h))  # q, k, v: [B, H] -> [B, H]
        self.cpu_linear_residual = LinearResidualKernel(out_shape=(b, h))  # out, fc2 (+ h)
        # fc1 + GELU in one kernel: -> [B, F] (the C++ kernel computes the tanh GELU only)
        self.cpu_linear_gelu = LinearGeluKernel(out_shape=(b, f)) if cfg.activation == "gelu" else None
        self.cpu_linear_f = LinearKernel(out_shape=(b, f)) if cfg.activation != "gelu" else None
        self.cpu_head = TiedHeadKernel(out_shape=(b, cfg.vocab_size))
        self.cpu_attention = DecodeAttentionKernel(max_length=max_length, head_dim=cfg.head_dim, out_shape=(b, h))
        self.cpu_write = CacheWriteKernel(batch_size=batch_size, heads=cfg.num_heads)

    def linear(self, x, w, b):
        return self.cpu_linear(x, w, b)

    def linear_gelu(self, x, w, b):
        if self.cpu_linear_gelu is None:
            return self.gelu(self.cpu_linear_f(x, w, b))
        return self.cpu_linear_gelu(x, w, b)

    def linear_residual(self, x, w, b, residual):
        return self.cpu_linear_residual(x, w, b, residual)

    def head(self, h, table):
        return self.cpu_head(h, table)

    def begin(self, slot, pad_len):
        """-> (slot, pad_len, write index or None when the C++ kernel writes in place, no bias)."""
        index = None
        if not self.in_place:
            index = self.index_base + slot * self.slot_axis
        return slot, pad_len, index, None

    def write_in_place(self, k_cache, v_cache, k, v, state):
        slot, _, _, _ = state
        written = self.cpu_write(k_cache, v_cache, k, v, slot)  # one C++ write of the slot
        return ops.depend(k_cache, written), ops.depend(v_cache, written)  # read after the write

    def attend_cache(self, q, k_cache, v_cache, state):
        slot, pad_len, _, _ = state
        return self.cpu_attention(q, k_cache, v_cache, slot, pad_len)  # [B, H]


def flash_decoding(cfg: ModelConfig, device: str, chip: str | None) -> bool:
    """True where the decoding graphs attend with Ascend's prompt/incremental flash attention:
    a 910B with an fp16/bf16 model (the operators take no fp32)."""
    return device == "Ascend" and chip == "910B" and cfg.compute_dtype != "float32"


def step_ops(cfg: ModelConfig, *, batch_size: int, max_length: int, fused: bool, cpu: bool,
             in_place: bool, device: str = "CPU", chip: str | None = None) -> StepOps:
    """The step graph's op set: `CpuStepOps` when the fused and C++ kernels are asked for, the
    model is fp32 and built for the CPU, and the kernel library builds here; `StepOps`
    otherwise (reference forms, LayerNorm/activation fused if `fused`, IncreFlashAttention on
    a 910B with an fp16/bf16 model)."""
    if fused and cpu and device == "CPU" and cfg.compute_dtype == "float32" and cpu_kernel_library() is not None:
        return CpuStepOps(cfg, batch_size=batch_size, max_length=max_length, in_place=in_place)
    return StepOps(cfg, batch_size=batch_size, max_length=max_length, fused=fused, in_place=in_place,
                   flash=flash_decoding(cfg, device, chip))
