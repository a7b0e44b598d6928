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


def compiled_op_dtypes(cell, inputs, out_dir, ops=None):
    """Compile `cell(*inputs)` and return {op name: set of input-dtype tuples} read from the
    graph MindSpore's frontend hands to the backend (the `*_validate_*.ir` dump): the dtypes
    each primitive of the forward and backward graph is called with. `ops` limits the names.

    Only that pass is dumped; the file is parsed and deleted again. A compile error of
    the backend (e.g. a CPU without bf16 matmul) comes after the dump and is ignored here;
    anything that stops the frontend raises.
    """
    import glob
    import os
    import re
    import shutil

    import mindspore as ms

    out_dir = str(out_dir)
    before = os.environ.get("MS_DEV_DUMP_IR_PASSES")
    os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"  # that one pass only (a full dump is ~100 MB)
    ms.set_context(save_graphs=True, save_graphs_path=out_dir)
    error = None
    try:
        cell(*inputs)
    except (RuntimeError, TypeError) as exc:  # the backend's kernel selection, if the frontend graph exists
        error = exc
    finally:
        ms.set_context(save_graphs=False)
        if before is None:
            os.environ.pop("MS_DEV_DUMP_IR_PASSES")
        else:
            os.environ["MS_DEV_DUMP_IR_PASSES"] = before
    files = sorted(glob.glob(f"{out_dir}/*_validate_*.ir"))
    if not files:
        raise AssertionError(f"no frontend graph was dumped into {out_dir}: the graph did not compile") from error
    found: dict[str, set] = {}
    for path in files:
        lines = open(path, encoding="utf-8").read().split("\n")
        for i, line in enumerate(lines[:-1]):
            m = re.search(r"= (?:PrimFunc_)?(\w+)\(", line)
            if not m or (ops is not None and m.group(1) not in ops):
                continue
            types = tuple(re.findall(r"Tensor\[(\w+)\]", lines[i + 1].split("->")[0]))
            found.setdefault(m.group(1), set()).add(types)
    shutil.rmtree(out_dir, ignore_errors=True)
    return found
