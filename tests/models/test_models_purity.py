"""The model files are math (STYLE.md): no parallel code and no device or fused-kernel code (the
kernel spec brings those), read from their syntax trees.

An AST scan rather than a text search: comments and docstrings may name `parallelize()`,
and a renamed import (`from mindspore import context as c; c.set_auto_parallel_context`)
must still be caught.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "pangu_ms" / "models"

# method calls and attribute writes that belong to the parallel package only
FORBIDDEN_CALLS = {"shard", "recompute", "set_comm_fusion", "add_pipeline_stage", "set_auto_parallel_context",
                   "AutoParallel", "Custom"}
FORBIDDEN_ATTRS = {"pipeline_stage", "in_strategy", "parallel_optimizer"}
FORBIDDEN_IMPORTS = ("pangu_ms.parallel", "mindspore.parallel", "mindspore.communication",
                     "pangu_ms.kernels.cpu_fused", "pangu_ms.kernels.cpu_training", "pangu_ms.kernels.ascend")
FORBIDDEN_NAMES = {"ParallelConfig", "RecomputeConfig", "Custom", "FlashAttentionScore", "AddLayerNormV2"}
FORBIDDEN_STRINGS = {"CPU", "Ascend", "GPU", "910A", "910B"}  # device choices belong to the kernel switch


def violations(source: str) -> list[str]:
    """Every forbidden construct in `source`, as 'line N: what'."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in FORBIDDEN_CALLS:
                out.append(f"line {node.lineno}: call to {name}()")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
            out.append(f"line {node.lineno}: attribute .{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            names = [a.name for a in node.names]
            for m in mods:
                if m.startswith(FORBIDDEN_IMPORTS):
                    out.append(f"line {node.lineno}: import of {m}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("mindspore", "pangu_ms")):
                for n in names:
                    if n in ("parallel", "communication") or n in FORBIDDEN_NAMES:
                        out.append(f"line {node.lineno}: import of {n}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            out.append(f"line {node.lineno}: name {node.id}")
        elif isinstance(node, ast.Constant) and node.value in FORBIDDEN_STRINGS:
            out.append(f"line {node.lineno}: device string {node.value!r}")
    return out


@pytest.mark.parametrize("path", sorted(MODELS.rglob("*.py")), ids=lambda p: p.name)
def test_model_file_holds_no_parallel_code(path):
    found = violations(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name}: " + "; ".join(found)


def test_the_scan_catches_each_construct():
    """The checker itself: each forbidden form is reported, docstrings and comments are not."""
    bad = {
        "self.matmul.shard(((2, 1), (1, 2)))": "call to shard()",
        "block.pipeline_stage = 3": "attribute .pipeline_stage",
        "self.blocks[0].recompute()": "call to recompute()",
        "cell.set_comm_fusion(2)": "call to set_comm_fusion()",
        "from pangu_ms.parallel.plans import plan_for": "import of pangu_ms.parallel.plans",
        "import mindspore.communication as comm": "import of mindspore.communication",
        "from mindspore import context as c\nc.set_auto_parallel_context(full_batch=True)":
            "call to set_auto_parallel_context()",
        "def f(p: ParallelConfig): pass": "name ParallelConfig",
        "from pangu_ms.kernels.cpu_training import FlashAttention": "import of pangu_ms.kernels.cpu_training",
        "self.k = ops.Custom(lib + ':F', func_type='aot')": "call to Custom()",
        "if device == 'Ascend': pass": "device string 'Ascend'",
    }
    for code, what in bad.items():
        assert any(what in v for v in violations(code)), code
    assert violations('"""calls .shard() via parallelize()"""\n# pipeline_stage is set elsewhere\nx = 1') == []
