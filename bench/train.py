#!/usr/bin/env python
"""Training throughput of pangu_ms's PanGu-alpha step, reference and fused kernels, against
PyTorch eager, PyTorch `torch.compile` and MindFormers 1.3.2.

Every system runs in a fresh process (the peers in their own venvs: `shared/bench/torch_pangu.py`,
`shared/bench/mindformers_pangu.py`), 5 untimed warm-up steps then `--steps` timed ones, on
the same shapes; the systems alternate within each of `--rounds` rounds, so a ratio compares
measurements taken minutes apart. Prints JSON lines:

    {"metric": "matmul_peak", "value": GFLOP/s, "by": {"numpy": .., "torch": .., "mindspore": ..}, "round": r}
    {"metric": "train_tokens_per_s", "system": "ours_fused", "value": ..., "shape": ..., "round": ...}
    {"metric": "mfu", "system": ..., "value": fraction of the round's matmul peak, ...}
    {"metric": "median_train_tokens_per_s", "system": ..., "value": ..., "runs": [...], "ratios": {...}}

`ratios` of the median lines are ours_fused / system (and ours_reference / system).
Systems: ours_fused and ours_reference (the real pretrain step of `pangu_ms.train.step`:
AdamW, dynamic loss scale, global-norm clip; `model.kernels` fused or reference), torch,
torch_compile, mindformers.

Model FLOPs per token = 6 N + 12 L S H (N = parameters that take part in matmuls, i.e. all
but the position and top-query lookup tables; the attention term counts QK^T and PV over the
full S x S, forward and backward). MFU = tokens/s x FLOPs per token / the fp32 matmul peak,
the best of NumPy, PyTorch and MindSpore's MatMul on 2048^3 (best of 5 each), measured at
the start of every round: on some machines of this kind NumPy's BLAS is several times slower
than the others.

Shapes: without shape flags, `tiny` (4 layers, H 256, 8 heads, S 256, B 8, V 8000) and `small`
(7, 512, 8, 256, 8, 8000); any of --layers --hidden --heads --seq --batch --vocab runs that one
shape instead. Peer interpreters default to the venvs next to the checkout (../torchref,
../mfref; see shared/bench/README.md); a missing one skips its systems.

    python bench/train.py                              # the full comparison (about 15 min on 2 cores)
    python bench/train.py --steps 2 --rounds 1 --systems ours_fused,ours_reference   # smoke run
    python bench/train.py --profile --systems ours_fused --rounds 1    # + where ours' step time goes

`--profile` runs MindSpore's Profiler (it works on CPU) over 3 more steps of each of ours and
prints the per-op-type time per step: {"metric": "op_time_ms_per_step", "system": ..., "ops": {...}}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCH = ROOT.parent / "shared" / "bench"
SHAPES = {
    "tiny": dict(layers=4, hidden=256, heads=8, seq=256, batch=8, vocab=8000),
    "small": dict(layers=7, hidden=512, heads=8, seq=256, batch=8, vocab=8000),
}
SHAPE_FLAGS = ("layers", "hidden", "heads", "seq", "batch", "vocab")
SYSTEMS = ("ours_fused", "ours_reference", "torch", "torch_compile", "mindformers")
PEAK_N = 2048
TORCH_PEAK = f"""
import time, torch
a = torch.randn({PEAK_N}, {PEAK_N}); b = a.clone(); a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(2.0 * {PEAK_N} ** 3 / best / 1e9)
"""


def flops_per_token(s: dict) -> float:
    """6N + 12 L S H for PanGu-alpha of shape `s` (tied head counted once, lookups excluded)."""
    h, layers, v, seq = s["hidden"], s["layers"], s["vocab"], s["seq"]
    f = 4 * h
    per_layer = 4 * (h * h + h) + (2 * h * f + f + h) + 4 * h
    n_matmul = v * h + layers * per_layer + 2 * h
    return 6.0 * n_matmul + 12.0 * layers * seq * h


def _best_of(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_worker(kind: str) -> None:
    """GFLOP/s of one fp32 2048^3 matmul, best of 5, by NumPy or MindSpore (this process)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    if kind == "numpy":
        best = _best_of(lambda: a @ a)
    else:
        os.environ.setdefault("GLOG_v", "3")
        import mindspore as ms
        from mindspore import Tensor, nn
        from mindspore.ops import operations as P

        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device("CPU")

        class _MatMul(nn.Cell):
            def __init__(self):
                super().__init__()
                self.matmul = P.MatMul()

            def construct(self, x, y):
                return self.matmul(x, y)

        cell, x = _MatMul(), Tensor(a)
        best = _best_of(lambda: cell(x, x).asnumpy())
    print(json.dumps({"gflops": 2.0 * PEAK_N ** 3 / best / 1e9}))


def worker(a: argparse.Namespace) -> None:
    """Ours, in this process: the real pretrain step (AdamW, loss scale, clip) on random ids."""
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor

    from pangu_ms.config import ModelConfig, OptimizerConfig, ScheduleConfig
    from pangu_ms.kernels.switch import kernel_spec
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, count_parameters
    from pangu_ms.train.optimizer import build_optimizer
    from pangu_ms.train.step import Trainer

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    cfg = ModelConfig(vocab_size=a.vocab, seq_length=a.seq, num_layers=a.layers, hidden_size=a.hidden,
                      ffn_hidden_size=4 * a.hidden, num_heads=a.heads, dropout=0.0, kernels=a.kernels)
    spec = kernel_spec(cfg.kernels)
    if a.kernels == "fused" and spec.name != "cpu_fused":
        raise SystemExit("model.kernels=fused did not get the C++ kernels here (see the warning): not benchmarking "
                         "the reference under the fused name")
    net = PanguAlphaWithLoss(cfg, spec)
    opt = OptimizerConfig(lr=1e-4)
    trainer = Trainer(net, build_optimizer(net.trainable_params(), opt, ScheduleConfig(warmup_steps=10),
                                           a.warmup + a.steps), opt)
    rng = np.random.default_rng(0)
    batch = (Tensor(rng.integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)),
             Tensor(np.tile(np.arange(a.seq, dtype=np.int32), (a.batch, 1))),
             Tensor(np.zeros((a.batch, a.seq), np.int32)))  # one document per row: causal attention
    for _ in range(a.warmup):
        trainer.step([batch])
    t0 = time.perf_counter()
    for _ in range(a.steps):
        trainer.step([batch])
    dt = (time.perf_counter() - t0) / a.steps
    out = {"tokens_per_s": a.batch * a.seq / dt, "step_s": dt, "params": count_parameters(cfg), "kernels": spec.name}
    if a.profile:
        out["op_time_ms_per_step"] = profile_steps(lambda: trainer.step([batch]), 3)
    print(json.dumps(out))


def profile_steps(step, n: int) -> dict[str, float]:
    """ms per step by op type over `n` profiled steps (MindSpore's Profiler, CPU op timings)."""
    import csv
    import glob
    import tempfile

    from mindspore import Profiler

    with tempfile.TemporaryDirectory() as d:
        prof = Profiler(output_path=d)
        for _ in range(n):
            step()
        prof.analyse()
        files = glob.glob(f"{d}/**/cpu_op_type_info_*.csv", recursive=True)
        totals: dict[str, float] = {}
        for path in files:
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):  # total_compute_time: ms over the profiled steps
                    totals[row["op_type"]] = totals.get(row["op_type"], 0.0) + float(row["total_compute_time"]) / n
    return dict(sorted(((k, round(v, 2)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def _venv_python(flag_value: str | None, name: str) -> str | None:
    """The peer interpreter: the flag, else ../<name>/bin/python next to the checkout if present."""
    if flag_value:
        return flag_value
    default = ROOT.parent / name / "bin" / "python"
    return str(default) if default.is_file() else None


def _run(cmd: list[str], timeout: float) -> dict | None:
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"}, timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        emit(metric="error", cmd=" ".join(cmd[:4]), rc=done.returncode, stderr=done.stderr[-600:])
        return None
    return json.loads(lines[-1])


def command(system: str, shape: dict, a: argparse.Namespace) -> list[str] | None:
    """The command line measuring `system` on `shape`, or None when its interpreter is missing."""
    flags = [f"--{k}={v}" for k, v in shape.items()] + [f"--steps={a.steps}", f"--warmup={a.warmup}"]
    if system.startswith("ours_"):
        return [sys.executable, "-P", str(Path(__file__).resolve()), "--worker", f"--kernels={system[5:]}", *flags,
                *(["--profile"] if a.profile else [])]
    python = a.mf_python if system == "mindformers" else a.torch_python
    script = Path(a.shared_bench) / ("mindformers_pangu.py" if system == "mindformers" else "torch_pangu.py")
    if not (python and Path(python).is_file() and script.is_file()):
        return None
    return [python, str(script), *flags, *(["--compile"] if system == "torch_compile" else [])]


def matmul_peak(a: argparse.Namespace) -> dict[str, float]:
    """GFLOP/s of the 2048^3 fp32 matmul by NumPy, MindSpore and (when its venv exists) PyTorch."""
    me = [sys.executable, "-P", str(Path(__file__).resolve())]
    out = {}
    for kind in ("numpy", "mindspore"):
        res = _run([*me, f"--peak={kind}"], a.timeout)
        if res:
            out[kind] = res["gflops"]
    if a.torch_python and Path(a.torch_python).is_file():
        done = subprocess.run([a.torch_python, "-c", TORCH_PEAK], capture_output=True, text=True, timeout=a.timeout)
        if done.returncode == 0:
            out["torch"] = float(done.stdout.split()[-1])
    return out


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def summarize(results: dict[tuple[str, str], list[float]], shapes: dict, systems: list[str]) -> None:
    for name in shapes:
        medians = {s: statistics.median(results[(name, s)]) for s in systems if results.get((name, s))}
        for system, med in medians.items():
            ratios = {f"{ours}/{system}": round(medians[ours] / med, 3)
                      for ours in ("ours_fused", "ours_reference") if ours in medians and ours != system}
            emit(metric="median_train_tokens_per_s", system=system, value=round(med, 1), unit="tokens/s",
                 shape=name, runs=[round(v, 1) for v in results[(name, system)]], ratios=ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in SHAPE_FLAGS:
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile + slow first launches)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of every system per shape")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument("--torch-python", default=None, help="python of a venv with torch (default ../torchref)")
    p.add_argument("--mf-python", default=None, help="python of a venv with mindformers 1.3.2 (default ../mfref)")
    p.add_argument("--shared-bench", default=str(SHARED_BENCH), help="folder of the peer scripts (../shared/bench)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--profile", action="store_true", help="also profile 3 steps of ours: op time by type")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kernels", default="fused", help=argparse.SUPPRESS)
    p.add_argument("--peak", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peak:
        return peak_worker(a.peak)
    if a.worker:
        return worker(a)
    a.torch_python = _venv_python(a.torch_python, "torchref")
    a.mf_python = _venv_python(a.mf_python, "mfref")
    custom = {k: getattr(a, k) for k in SHAPE_FLAGS if getattr(a, k) is not None}
    shapes = {"custom": {**SHAPES["tiny"], **custom}} if custom else SHAPES
    systems = [s for s in a.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: unknown {sorted(unknown)}; use {', '.join(SYSTEMS)}")
    for s in systems:
        if command(s, SHAPES["tiny"], a) is None:
            emit(metric="skipped", system=s, reason="its interpreter or script is missing (--torch-python, "
                 "--mf-python, --shared-bench)")
    systems = [s for s in systems if command(s, SHAPES["tiny"], a) is not None]
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(a.rounds):
        by = matmul_peak(a)
        peak = max(by.values())
        emit(metric="matmul_peak", value=round(peak, 1), unit="GFLOP/s", by={k: round(v, 1) for k, v in by.items()},
             round=r)
        for name, shape in shapes.items():
            for system in systems:
                res = _run(command(system, shape, a), a.timeout)
                if res is None:
                    continue
                tps = float(res["tokens_per_s"])
                results.setdefault((name, system), []).append(tps)
                if "op_time_ms_per_step" in res:
                    emit(metric="op_time_ms_per_step", system=system, shape=name, round=r,
                         step_ms=round(1e3 * res["step_s"], 1), ops=res["op_time_ms_per_step"])
                emit(metric="train_tokens_per_s", system=system, value=round(tps, 1), unit="tokens/s", shape=name,
                     round=r)
                emit(metric="mfu", system=system, value=round(tps * flops_per_token(shape) / (peak * 1e9), 4),
                     unit="fraction", shape=name, round=r)
    summarize(results, shapes, systems)


if __name__ == "__main__":
    main()
