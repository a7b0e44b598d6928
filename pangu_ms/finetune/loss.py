"""The fine-tuning objective: label-token NLL plus GPT's auxiliary LM loss on the prompt."""
from __future__ import annotations

import dataclasses

from mindspore import nn, ops

from pangu_ms.models.pangu_alpha import PanguAlphaLM


class FinetuneLoss(nn.Cell):
    """(ids [B, S], position ids [B, S], document ids [B, S], label_rows [B*K], labels [B*K],
    lm_rows [B*J], lm_labels [B*J]) -> loss [].

    The loss is the mean NLL of the label tokens plus `lm_weight` times the mean NLL of J
    sampled next tokens of the prompt text: the auxiliary language-modelling objective of
    GPT fine-tuning (Radford et al. 2018), which keeps the model learning the task's domain
    while the label signal is still one bit per example. `*_rows` index the flattened [B*S]
    positions; pad labels count for nothing. The loss is the model's (its kernel spec's
    `lm_loss`: tied head and cross-entropy). Shares `lm`'s weights (names unchanged).
    """

    def __init__(self, lm: PanguAlphaLM, lm_weight: float = 0.0):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.loss = lm.kernel_spec.lm_loss(lm.config)
        self.gather = ops.Gather()
        self.lm_weight = float(lm_weight)

    def construct(self, input_ids, position_ids, document_ids, label_rows, labels, lm_rows, lm_labels):
        h = self.lm.backbone(input_ids, position_ids, document_ids)  # [B*S, H]
        table = self.lm.backbone.word_embedding.embedding_table
        loss = self.loss(self.gather(h, label_rows, 0), table, labels)  # over [B*K] positions
        if self.lm_weight > 0:
            loss = loss + self.lm_weight * self.loss(self.gather(h, lm_rows, 0), table, lm_labels)
        return loss


def with_dropout(lm: PanguAlphaLM, dropout: float) -> PanguAlphaLM:
    """The same model and weights, rebuilt with `dropout` (nn.Dropout is fixed at build time)."""
    import mindspore as ms

    if dropout == lm.config.dropout:
        return lm
    out = PanguAlphaLM(dataclasses.replace(lm.config, dropout=dropout), lm.kernel_spec)
    missing, _ = ms.load_param_into_net(out, {p.name: p for p in lm.get_parameters()}, strict_load=True)
    if missing:
        raise RuntimeError(f"rebuilding the model with dropout={dropout} left weights unset: {missing[:3]}")
    return out
