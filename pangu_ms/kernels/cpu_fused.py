"""The CPU `fused` spec: the C++ training kernels of `pangu_ms.kernels.cpu_training` in the
model's roles, with the reference roles' parameters and interfaces.

Notation: B batch, S sequence, T = B*S tokens, H hidden, F ffn width, N heads, D head dim, V vocab.

The kernels (multithreaded, AVX2/AVX-512, forward and backward, built on first use from
`kernels/cpu/`) are wrapped so the model cannot tell them from the reference Cells: a
LayerNorm holds `gamma`/`beta`, the attention core takes q, k, v [B, N, S, D] and returns fp32,
the loss takes (h, table, labels). The attention mask role passes the document ids through
(the kernel masks from them); plain LayerNorm runs the AddLayerNorm kernel with a zero
residual (the library has no separate LayerNorm kernel).

CPU runs no semi-auto parallelism (MindSpore refuses it there), so these Cells state every
primitive replicated: a plan covers them and data parallel, which ignores strategies, runs them.
"""
from __future__ import annotations

import functools

import mindspore as ms
from mindspore import nn
from mindspore.ops import operations as P

from pangu_ms.config import ModelConfig
from pangu_ms.kernels.reference import _NormParams
from pangu_ms.kernels.switch import KernelSpec



@functools.lru_cache(maxsize=None)
def cpu_fused_available() -> bool:
    """True when the C++ training library builds here (else one warning says why)."""
    try:
        from pangu_ms.kernels.cpu_training import cpu_training_library
    except ImportError as exc:
        import logging

        logging.getLogger(__name__).warning("fused CPU training kernels off: %s (reference ops used)", exc)
        return False
    return cpu_training_library() is not None


def _kernels():
    from pangu_ms.kernels import cpu_training

    return cpu_training


def primitive_paths(cell: nn.Cell, prefix: str) -> list[str]:
    """The path of every primitive of `cell` (itself and every sub-cell) placed at `prefix`."""
    out = []
    for name, sub in cell.cells_and_names():
        for attr, prim in sub._primitives.items():  # pylint: disable=protected-access
            if prim is not None:
                out.append(".".join(x for x in (prefix, name, attr) if x))
    return out


class CpuLayerNorm(_NormParams):
    """LayerNorm of x [T, H] fp32 by the AddLayerNorm kernel with a zero residual -> [T, H]."""

    def __init__(self, hidden: int, *, eps: float = 1e-5):
        super().__init__(hidden, eps)
        self.kernel = _kernels().AddLayerNorm(eps)
        self.zeros_like = P.ZerosLike()

    def construct(self, x):
        _, y = self.kernel(x, self.zeros_like(x), self.gamma, self.beta)
        return y


class CpuAddLayerNorm(_NormParams):
    """(x [T, H], residual [T, H] fp32) -> (s = residual + x, LayerNorm(s)) fp32: one kernel."""

    def __init__(self, hidden: int, *, eps: float = 1e-5):
        super().__init__(hidden, eps)
        self.kernel = _kernels().AddLayerNorm(eps)

    def construct(self, x, residual):
        return self.kernel(x, residual, self.gamma, self.beta)


class CpuBiasActivation(nn.Cell):
    """act(z + bias) in one kernel: z [T, F], bias [F] -> [T, F]."""

    bias_input: tuple[str, int] = ("kernel.kernel", 1)

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.kernel = _kernels().BiasActivation(kind)

    def construct(self, z, bias):
        return self.kernel(z, bias)


class DocumentIds(nn.Cell):
    """The mask role of the C++ attention: the document ids themselves, [B, S] int32."""

    def construct(self, document_ids):
        return document_ids


class CpuFlashAttention(nn.Cell):
    """q, k, v [B, N, S, D] (fp32 or fp16, q not scaled), document ids [B, S] -> ctx fp32: the
    tiled C++ attention (online softmax in fp32, the S x S scores never stored)."""

    def __init__(self, head_dim: int, dtype: str = "float32"):
        super().__init__()
        self.kernel = _kernels().FlashAttention(head_dim)
        self.low_precision = dtype != "float32"
        self.cast = P.Cast()

    def construct(self, q, k, v, document_ids):
        ctx = self.kernel(q, k, v, document_ids)
        if self.low_precision:
            ctx = self.cast(ctx, ms.float32)
        return ctx


class CpuTiedHeadCrossEntropy(nn.Cell):
    """(h [T, H], table [V, H], labels [T]) -> mean NLL over non-pad labels, fp32; the [T, V]
    logits are never kept for the backward (the kernel computes the gradients in the forward
    pass, chunk by chunk, and the backward scales them)."""

    def __init__(self, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.kernel = _kernels().TiedHeadCrossEntropy(pad_id)

    def construct(self, h, table, labels):
        return self.kernel(h, table, labels)


class CpuFusedKernels(KernelSpec):
    """The CPU spec: every role but the reference ones below runs a C++ kernel.

    Reference where the kernels do not apply: the attention core of a model with probability
    dropout, and the loss of an fp16 model (the kernel's head product is fp32)."""

    name = "cpu_fused"
    fused_optimizer = True

    def layer_norm(self, hidden: int, eps: float) -> nn.Cell:
        return CpuLayerNorm(hidden, eps=eps)

    def add_layer_norm(self, hidden: int, eps: float) -> nn.Cell:
        return CpuAddLayerNorm(hidden, eps=eps)

    def bias_activation(self, kind: str) -> nn.Cell:
        return CpuBiasActivation(kind)

    def attention_mask(self, cfg: ModelConfig) -> nn.Cell:
        return DocumentIds() if cfg.dropout == 0 else super().attention_mask(cfg)

    def core_attention(self, cfg: ModelConfig) -> nn.Cell:
        return CpuFlashAttention(cfg.head_dim, cfg.compute_dtype) if cfg.dropout == 0 else super().core_attention(cfg)

    def lm_loss(self, cfg: ModelConfig) -> nn.Cell:
        return CpuTiedHeadCrossEntropy(cfg.pad_id) if cfg.compute_dtype == "float32" else super().lm_loss(cfg)

    def _role_cell(self, role: str, cfg: ModelConfig) -> nn.Cell:
        if role in ("layer_norm", "add_layer_norm"):
            return getattr(self, role)(cfg.hidden_size, cfg.layernorm_eps)
        if role == "bias_activation":
            return self.bias_activation(cfg.activation)
        return getattr(self, role)(cfg)

    def fused_strategies(self, role: str, prefix: str, cfg: ModelConfig) -> dict | None:
        """Every primitive of the role's C++ Cell replicated (None where the role is the reference)."""
        cell = self._role_cell(role, cfg)
        if type(cell).__module__ != __name__:
            return None
        return {path: None for path in primitive_paths(cell, prefix)}
