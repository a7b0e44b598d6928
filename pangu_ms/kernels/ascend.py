"""Ascend 910B (Atlas A2/A3) fused operators for training and decoding, as Cells of the roles
in `pangu_ms.kernels.switch`.

Notation: B batch, S sequence, M cache slots, T = B*S tokens, H hidden, N heads, D head dim.

- `FlashAttention`: CANN's FlashAttentionScore (tiled, the S x S scores never stored) in the
  BNSD layout. The causal plus same-document mask comes from the document ids as a uint8
  [B, 1, S, S] "blocked" mask built on the device (`BlockedMask`), with `next_tokens=0` so
  blocks above the diagonal are skipped. Why not TND with `actual_seq_qlen`: the number of
  documents in a batch varies from step to step, and TND takes one cumulative length per
  document (no empty ones), so every new count would be a new graph. Why not a compressed
  causal `sparse_mode` (2/3): it cannot express end-of-document resets.
- `AddLayerNorm`: CANN's AddLayerNorm (residual add and LayerNorm in one pass, fp32 statistics).
- `PromptFlashAttention` / `IncreFlashAttention`: the decoding graphs' attention.

These operators exist on 910B only ("kernel ... unregistered" on CPU, absent on 910A), so
nothing here runs on the CPU test machines: tests check which operator a built model holds,
its attributes and its shard strategy, never its output. The input dtypes are fp16 or bf16
(the compute dtype); outputs are cast back to fp32 like every other role's.

Each Cell states its own shard strategy (`strategies(prefix)`) in the logical axis names of
`pangu_ms.parallel.plans` ("batch", "heads"), which the plan merges in.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Tensor, nn
from mindspore.ops import operations as P
from mindspore.ops.auto_generate import gen_ops_prim as prims

from pangu_ms.config import ModelConfig
from pangu_ms.kernels.reference import SameDocument, _NormParams
from pangu_ms.kernels.switch import KernelSpec

MAX_TOKENS = 2147483647
B, N = "batch", "heads"
BNSD = (B, N, None, None)
ROW = (B, None)


class BlockedMask(SameDocument):
    """Document ids [B, S] -> uint8 [B, 1, S, S]: 1 where token i may NOT see token j (the
    flash operators' convention), i.e. not (j <= i and same document)."""

    def __init__(self):
        super().__init__()
        self.blocked = P.LogicalNot()

    def construct(self, document_ids):
        return self.cast(self.blocked(self.allowed(document_ids)), ms.uint8)

    @staticmethod
    def strategies(p: str) -> dict:
        b4 = (B, None, None, None)
        return {f"{p}.same_doc": (b4, b4), f"{p}.causal": ((None, None), (None, None)), f"{p}.both": (b4, (None, None)),
                f"{p}.blocked": (b4,), f"{p}.cast": None}


class FlashAttention(nn.Cell):
    """Core attention with FlashAttentionScore: q, k, v [B, N, S, D] fp16/bf16 (q not scaled),
    blocked uint8 [B, 1, S, S] -> ctx [B, N, S, D] fp32. Softmax in fp32 inside the operator.
    Probability dropout, if any, through the operator's drop mask (`DropoutGenMask` bits)."""

    def __init__(self, num_heads: int, head_dim: int, *, dropout: float = 0.0):
        super().__init__()
        self.keep_prob = 1.0 - dropout
        self.flash_attention = prims.FlashAttentionScore(head_num=num_heads, keep_prob=self.keep_prob,
                                                   scale_value=1.0 / math.sqrt(head_dim), pre_tokens=MAX_TOKENS,
                                                   next_tokens=0, inner_precise=0, input_layout="BNSD",
                                                   sparse_mode=0)
        self.cast = P.Cast()
        self.drop_gen_mask = P.DropoutGenMask() if dropout > 0 else None
        self.keep_prob_tensor = Tensor(self.keep_prob, ms.float16)

    def construct(self, q, k, v, blocked):
        b, n, s, _ = q.shape
        drop = None
        if self.drop_gen_mask is not None:  # one bit per score
            drop = self.drop_gen_mask((b, n, s, s), self.keep_prob_tensor).reshape(b, n, s, s // 8)
        _, _, _, ctx = self.flash_attention(q, k, v, None, drop, None, blocked, None, None, None)
        return self.cast(ctx, ms.float32)  # [B, N, S, D]

    @staticmethod
    def strategies(p: str, dropout: float) -> dict:
        inputs = (BNSD, BNSD, BNSD) + ((BNSD,) if dropout > 0 else ()) + ((B, None, None, None),)
        out = {f"{p}.flash_attention": inputs, f"{p}.cast": None}
        if dropout > 0:
            out[f"{p}.drop_gen_mask"] = None
        return out


class AddLayerNorm(_NormParams):
    """(x [T, H], residual [T, H]) -> (s = residual + x, LayerNorm(s)), fp32: CANN AddLayerNorm."""

    param_consumers = {"gamma": ("add_layer_norm", 2), "beta": ("add_layer_norm", 3)}

    def __init__(self, hidden: int, *, eps: float = 1e-5):
        super().__init__(hidden, eps)
        self.add_layer_norm = prims.AddLayerNormV2()

    def construct(self, x, residual):
        y, _, _, s = self.add_layer_norm(residual, x, self.gamma, self.beta, self.eps, True)
        return s, y

    @staticmethod
    def strategies(p: str) -> dict:
        return {f"{p}.add_layer_norm": (ROW, ROW, (None,), (None,))}


class PromptFlashAttention(nn.Cell):
    """The prompt graph's attention: q, k, v [B, N, S, D] (not scaled), additive bias [B, 1, S, S]
    fp32 (`window_bias`) -> ctx [B, N, S, D] fp32, with PromptFlashAttention in `dtype`."""

    def __init__(self, num_heads: int, head_dim: int, dtype: ms.dtype.Type):
        super().__init__()
        self.dtype = dtype
        self.prompt_flash_attention = prims.PromptFlashAttention(num_heads=num_heads, scale_value=1.0 / math.sqrt(head_dim),
                                                           pre_tokens=MAX_TOKENS, next_tokens=0, input_layout="BNSD",
                                                           num_key_value_heads=0, sparse_mode=0, inner_precise=1)
        self.is_blocked = P.Less()
        self.cast = P.Cast()

    def construct(self, q, k, v, bias):
        blocked = self.is_blocked(bias, -1.0)  # bool [B, 1, S, S]
        ctx = self.prompt_flash_attention(self.cast(q, self.dtype), self.cast(k, self.dtype), self.cast(v, self.dtype),
                                          blocked, None, None, None, None, None, None, None, None)
        return self.cast(ctx, ms.float32)


class IncreFlashAttention(nn.Cell):
    """The step graph's attention: q [B, N, 1, D] (not scaled) against caches [B, N, M, D], additive
    bias [B, 1, 1, M] fp32 -> ctx [B, N, 1, D] fp32, with IncreFlashAttention in `dtype`."""

    def __init__(self, num_heads: int, head_dim: int, dtype: ms.dtype.Type):
        super().__init__()
        self.dtype = dtype
        self.incre_flash_attention = prims.IncreFlashAttention(num_heads=num_heads, input_layout="BNSD",
                                                         scale_value=1.0 / math.sqrt(head_dim), num_key_value_heads=0)
        self.is_blocked = P.Less()
        self.cast = P.Cast()

    def construct(self, q, k, v, bias):
        blocked = self.is_blocked(bias, -1.0)  # bool [B, 1, 1, M]
        ctx = self.incre_flash_attention(self.cast(q, self.dtype), [self.cast(k, self.dtype)],
                                         [self.cast(v, self.dtype)], blocked, None, None, None, None, None, None,
                                         None, None, None, None, None)
        return self.cast(ctx, ms.float32)


class Ascend910BKernels(KernelSpec):
    """The 910B spec: FlashAttentionScore on the document ids' blocked mask and CANN's
    AddLayerNorm; LayerNorm, bias + activation (`P.FastGeLU` is `ops.fast_gelu`), the loss and
    AdamW are the reference ops, which are CANN kernels already. FlashAttentionScore takes
    fp16/bf16 only: an fp32 model keeps the reference attention."""

    name = "ascend_910b"

    @staticmethod
    def _flash(cfg: ModelConfig) -> bool:
        return cfg.compute_dtype != "float32"

    def add_layer_norm(self, hidden: int, eps: float) -> nn.Cell:
        return AddLayerNorm(hidden, eps=eps)

    def attention_mask(self, cfg: ModelConfig) -> nn.Cell:
        return BlockedMask() if self._flash(cfg) else super().attention_mask(cfg)

    def core_attention(self, cfg: ModelConfig) -> nn.Cell:
        if self._flash(cfg):
            return FlashAttention(cfg.num_heads, cfg.head_dim, dropout=cfg.dropout)
        return super().core_attention(cfg)

    def fused_strategies(self, role: str, prefix: str, cfg: ModelConfig) -> dict | None:
        if role == "add_layer_norm":
            return AddLayerNorm.strategies(prefix)
        if role == "attention_mask" and self._flash(cfg):
            return BlockedMask.strategies(prefix)
        if role == "core_attention" and self._flash(cfg):
            return FlashAttention.strategies(prefix, cfg.dropout)
        return None
