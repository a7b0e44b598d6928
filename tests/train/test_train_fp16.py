"""`model.compute_dtype: float16` is not silently ignored: the compiled train step's matmuls
take fp16 inputs, softmax and the log-softmax of the loss take fp32 ones, and the loss
differs from the fp32 model's.

The dtypes are read from the graph MindSpore compiles (`MS_DEV_SAVE_GRAPHS`, the `validate`
stage: after type inference and autodiff, before the backend picks kernels), by operator
type, so renaming or restructuring the model's operators does not blind the check. (On CPU
the backend then runs these fp16 MatMuls through its fp32 kernel on the fp16-rounded
inputs; what the graph asks for is what an Ascend device gets.)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("fp16_graph_probe.py")
OPS = ("MatMul", "BatchMatMul", "Softmax", "LogSoftmax")
_NODE = re.compile(r"= (?:PrimFunc_)?(" + "|".join(OPS) + r")\(")


def compiled_dtypes(dtype: str, out: Path) -> tuple[float, Counter]:
    """Run one train step with `dtype` compute; (loss, Counter of (op type, input dtypes))."""
    env = {**os.environ, "GLOG_v": "3", "MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_DUMP_IR_PASSES": "validate",
           "MS_DEV_SAVE_GRAPHS_PATH": str(out)}
    done = subprocess.run([sys.executable, str(PROBE), dtype], capture_output=True, text=True, env=env,
                          cwd=out.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    graphs = sorted(out.glob("*validate*.ir"))
    assert graphs, f"no validate-stage graph saved in {out}: {sorted(p.name for p in out.iterdir())}"
    found: Counter = Counter()
    for graph in graphs:
        lines = graph.read_text(errors="replace").splitlines()
        for line, types in zip(lines, lines[1:]):  # a node's line, then its ": (inputs) -> (outputs)"
            m = _NODE.search(line)
            if m:
                found[(m.group(1), tuple(re.findall(r"<Tensor\[(\w+)\]", types.split("->")[0])))] += 1
    return json.loads(done.stdout.strip().splitlines()[-1])["loss"], found


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    return {d: compiled_dtypes(d, root / d) for d in ("float16", "float32")}


def _inputs(found: Counter, *ops: str) -> set[str]:
    return {t for (op, types), n in found.items() if op in ops for t in types}


def test_fp16_matmuls_really_take_fp16_inputs(graphs):
    loss16, found16 = graphs["float16"]
    loss32, found32 = graphs["float32"]
    n_mm = sum(n for (op, _), n in found16.items() if op in ("MatMul", "BatchMatMul"))
    # forward and backward of 3 layers x 6 projections, 2 attention products each, the head
    assert n_mm >= 2 * (3 * 8 + 1), found16
    assert _inputs(found16, "MatMul", "BatchMatMul") == {"Float16"}, found16
    assert _inputs(found32, "MatMul", "BatchMatMul") == {"Float32"}, found32
    # softmax (attention) and the loss's log-softmax stay fp32 under fp16 compute
    assert _inputs(found16, "Softmax") == {"Float32"} and _inputs(found16, "LogSoftmax") == {"Float32"}, found16
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.05, (loss16, loss32)
