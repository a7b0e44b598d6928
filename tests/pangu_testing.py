"""Test helpers importable from every test directory (`from pangu_testing import ...`).

Not named `conftest`: pytest loads several conftest modules under that one name, so
`from conftest import x` would pick whichever was imported last.
"""
from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable

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


_PORT_CLASH = re.compile(r"address already in use|EADDRINUSE|errno 98|failed to bind", re.IGNORECASE)


def os_port() -> int:
    """A TCP port the OS reports free: bind port 0 on all interfaces, read it, release it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def with_free_port(run: Callable[[int], tuple[int, str]], *, attempts: int = 4) -> tuple[int, str, int]:
    """Run `run(port)` -> (exit status, logs) on a port the OS picked. msrun binds the master
    port itself and cannot take an open socket, so another process may take the port between
    the pick and msrun's bind: a failure whose logs say the address was in use is retried
    on a new port. Returns (exit status, logs, port) of the last attempt."""
    for _ in range(attempts):
        port = os_port()
        rc, logs = run(port)
        if rc == 0 or not _PORT_CLASH.search(logs):
            return rc, logs, port
    return rc, logs, port


WITHOUT_KERNELS = "PANGU_MS_TEST_WITHOUT_KERNELS"


def require_cpu_kernels() -> None:
    """The C++ decode kernels must build here: without them every `fused=True` kernel runs its
    reference composition and a fused-against-reference test compares the reference with
    itself. A failure, not a skip; outside CI, `PANGU_MS_TEST_WITHOUT_KERNELS=1` turns it into
    a visible skip on machines that cannot have them (no x86-64 AVX2/FMA, no g++)."""
    import os
    import shutil

    import pytest

    from pangu_ms.kernels.build import CPU_SOURCE, cpu_features, cpu_kernel_library, kernel_source

    if cpu_kernel_library() is not None:
        return
    if kernel_source(CPU_SOURCE) is None:
        why = f"the kernel source {CPU_SOURCE} is missing from this install"
    elif not {"avx2", "fma"} <= cpu_features():
        why = "this CPU has no AVX2 and FMA"
    elif not (shutil.which("g++") or shutil.which("c++")):
        why = "no g++ (or c++) on PATH"
    else:
        why = "compiling them failed (the warning logged by pangu_ms.kernels.build says why)"
    if os.environ.get(WITHOUT_KERNELS) and not os.environ.get("CI"):
        pytest.skip(f"C++ decode kernels unavailable: {why} ({WITHOUT_KERNELS} is set)")
    pytest.fail(f"the C++ decode kernels do not build here: {why}; the fused tests would compare the reference "
                f"with itself. Install g++ (x86-64 with AVX2 and FMA needed), or outside CI set {WITHOUT_KERNELS}=1 "
                "to skip those tests")


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


def golden_dumps(obj: dict) -> str:
    """JSON with one table entry per line (reviewable diffs)."""
    lines, items = ["{"], list(obj.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, dict) and value:
            rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines += [f" {json.dumps(key)}: {{", ",\n".join(rows), f" }}{comma}"]
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


def updating_golden() -> bool:
    """PANGU_UPDATE_GOLDEN=1 asks to rewrite the files; CI refuses it."""
    import pytest

    if os.environ.get("PANGU_UPDATE_GOLDEN", "") not in ("", "0"):
        if os.environ.get("CI"):
            pytest.fail("PANGU_UPDATE_GOLDEN is set under CI: the golden test would compare the plans with what it "
                        "just wrote; regenerate locally, review the diff and commit it")
        return True
    return False
