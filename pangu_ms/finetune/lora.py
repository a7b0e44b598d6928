"""LoRA (Hu et al. 2021) on the attention projections of a `PanguAlphaLM`.

y = x W + b + (alpha / r) * (x A) B, with A [in, r] ~ Normal(0, 1/sqrt(in)) and B [r, out] = 0,
so an adapted model starts out exactly equal to the base model. Only A and B train; the base
weights are frozen. `merge_lora` folds (alpha / r) A B into W and puts the plain `Linear`
back, so the result is an ordinary PanguAlphaLM (same checkpoint layout, same decoding).
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.common.initializer import Normal, Zero, initializer
from mindspore.ops import operations as P

from pangu_ms.models.layers import Linear
from pangu_ms.models.pangu_alpha import PanguAlphaLM

TARGETS = ("linear_q", "linear_k", "linear_v", "linear_out")


class LoRALinear(nn.Cell):
    """A frozen `Linear` plus a trainable low-rank update: [T, in] -> [T, out]."""

    def __init__(self, base: Linear, rank: int, alpha: float):
        super().__init__(auto_prefix=False)
        in_dim, out_dim = base.weight.shape
        prefix = base.weight.name[: -len("weight")]  # e.g. "backbone.blocks.0.attention.linear_q."
        self.base = base
        self.lora_a = Parameter(initializer(Normal(sigma=1.0 / math.sqrt(in_dim)), (in_dim, rank), ms.float32),
                                name=prefix + "lora_a")
        self.lora_b = Parameter(initializer(Zero(), (rank, out_dim), ms.float32), name=prefix + "lora_b")
        self.scaling = alpha / rank
        self.down = P.MatMul()
        self.up = P.MatMul()
        self.add = P.Add()

    def construct(self, x):
        delta = self.up(self.down(x, self.lora_a), self.lora_b) * self.scaling  # [T, out]
        return self.add(self.base(x), delta)


def _attentions(lm: PanguAlphaLM) -> list[nn.Cell]:
    bb = lm.backbone
    return [b.attention for b in bb.blocks] + [bb.query_layer.attention]


def _replace(parent: nn.Cell, attr: str, child: nn.Cell) -> None:
    """Set a child Cell without the parent's automatic renaming of every parameter below it."""
    names = {id(p): p.name for p in child.get_parameters()}
    setattr(parent, attr, child)
    for p in child.get_parameters():
        p.name = names[id(p)]


def apply_lora(lm: PanguAlphaLM, *, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> list[Parameter]:
    """Wrap the target projections of every attention in LoRA; freeze all other weights.

    Returns the trainable LoRA parameters. Call before compiling anything with `lm`.
    """
    for p in lm.get_parameters():
        p.requires_grad = False
    trainable = []
    for attn in _attentions(lm):
        for name in targets:
            wrapped = LoRALinear(getattr(attn, name), rank, alpha)
            _replace(attn, name, wrapped)
            trainable += [wrapped.lora_a, wrapped.lora_b]
    return trainable


def merged_weights(lm: PanguAlphaLM) -> dict[str, np.ndarray]:
    """{parameter name: value} of the plain model: LoRA updates folded into W, adapters dropped."""
    out = {}
    lora = {}
    for attn in _attentions(lm):
        for name in TARGETS:
            cell = getattr(attn, name)
            if isinstance(cell, LoRALinear):
                delta = cell.lora_a.asnumpy() @ cell.lora_b.asnumpy() * cell.scaling
                lora[cell.base.weight.name] = delta
    for p in lm.get_parameters():
        if p.name.endswith(("lora_a", "lora_b")):
            continue
        out[p.name] = p.asnumpy() + lora.get(p.name, 0.0)
    return out


def merge_lora(lm: PanguAlphaLM) -> None:
    """Fold the adapters into the base weights in place and restore plain `Linear` cells.

    Graphs compiled before the merge keep the old structure: compile fresh Cells afterwards.
    """
    for attn in _attentions(lm):
        for name in TARGETS:
            cell = getattr(attn, name)
            if isinstance(cell, LoRALinear):
                w = cell.base.weight
                w.set_data(Tensor(w.asnumpy() + cell.lora_a.asnumpy() @ cell.lora_b.asnumpy() * cell.scaling))
                _replace(attn, name, cell.base)
    for p in lm.get_parameters():
        p.requires_grad = True
