"""Test helpers importable from every test directory (`from pangu_testing import ...`).

Not named `conftest`: pytest loads several conftest modules under that one name, so
`from conftest import x` would pick whichever was imported last.
"""
from __future__ import annotations

from pangu_ms.config import ModelConfig

LM_SEQ = 16
"""sequence length of the shared `tiny_lm` fixture."""


def tiny_model_config(**overrides) -> ModelConfig:
    """A very small PanGu-alpha for numerics and unit tests (not the 5M `tiny` YAML model)."""
    fields = dict(vocab_size=96, seq_length=16, num_layers=3, hidden_size=32, ffn_hidden_size=64,
                  num_heads=4, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def vjp_cell(fn):
    """A Cell computing sum(fn(*inputs) * dy) gradients with respect to every input:
    `vjp_cell(fn)(*inputs, dy)` -> tuple of gradients (a vector-Jacobian product)."""
    import mindspore as ms
    from mindspore import nn

    class _Vjp(nn.Cell):
        def __init__(self):
            super().__init__()
            self.fn = fn
            self.grad = ms.ops.GradOperation(get_all=True, sens_param=True)

        def construct(self, *args):
            return self.grad(self.fn)(*args)

    return _Vjp()


def tiny_lm_model(seq_length: int = LM_SEQ, seed: int = 7):
    """A randomly initialised `PanguAlphaLM` of the tiny test shape, in eval mode."""
    import mindspore as ms

    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    ms.set_seed(seed)
    lm = PanguAlphaLM(tiny_model_config(seq_length=seq_length))
    lm.set_train(False)
    return lm
