#!/usr/bin/env python
"""Training throughput of pangu_ms's PanGu-alpha step vs PyTorch and MindFormers 1.3.2.

Runs ours, `shared/bench/torch_pangu.py` and `shared/bench/mindformers_pangu.py` (each in a
fresh process, the peers in their own venvs) on the same shapes, alternating for `--rounds`
rounds, 5 untimed warm-up steps each. Prints JSON lines:

    {"metric": "train_tokens_per_s", "value": ..., "unit": "tokens/s", "peer": null|"torch"|"mindformers",
     "ratio": ours/peer (peer lines), "shape": ..., "round": ...}
    {"metric": "mfu", "value": ..., "unit": "fraction", ...}            model FLOPs utilisation
    {"metric": "matmul_peak", "value": ..., "unit": "GFLOP/s", ...}      fp32 sgemm peak, same run
    {"metric": "median_train_tokens_per_s", ...}                          per shape and system, at the end

Model FLOPs per token = 6 N + 12 L S H (N = parameters that take part in matmuls, i.e. all
but the position and top-query lookup tables; the attention term counts QK^T and PV over the
full S x S, forward and backward). MFU = tokens/s x FLOPs per token / the fp32 matmul peak
(best of 2048^3 numpy sgemm runs, measured at the start of every round).

Shapes: without shape flags, `tiny` (4 layers, H 256, 8 heads, S 256, B 8, V 8000) and `small`
(7, 512, 8, 256, 8, 8000); any of --layers --hidden --heads --seq --batch --vocab runs that one
shape instead. Peer venvs (see shared/bench/README.md): --torch-python, --mf-python; a
missing interpreter skips that peer. Smoke run: `python bench/train.py --steps 2 --rounds 1`.
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


def flops_per_token(s: dict) -> float:
    """6N + 12 L S H for PanGu-alpha of shape `s` (tied head counted once, lookups excluded)."""
    h, layers, v, seq = s["hidden"], s["layers"], s["vocab"], s["seq"]
    f = 4 * h
    per_layer = 4 * (h * h + h) + (2 * h * f + f + h) + 4 * h
    n_matmul = v * h + layers * per_layer + 2 * h
    return 6.0 * n_matmul + 12.0 * layers * seq * h


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def worker(a: argparse.Namespace) -> None:
    """Ours, in this process: the real pretrain step (AdamW, loss scale, clip) on random ids."""
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor

    from pangu_ms.config import ModelConfig, OptimizerConfig, ScheduleConfig
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, count_parameters
    from pangu_ms.train.optimizer import build_optimizer
    from pangu_ms.train.step import Trainer

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    cfg = ModelConfig(vocab_size=a.vocab, seq_length=a.seq, num_layers=a.layers, hidden_size=a.hidden,
                      ffn_hidden_size=4 * a.hidden, num_heads=a.heads, dropout=0.0)
    net = PanguAlphaWithLoss(cfg)
    opt = OptimizerConfig(lr=1e-4)
    trainer = Trainer(net, build_optimizer(net.trainable_params(), opt, ScheduleConfig(warmup_steps=10),
                                           a.warmup + a.steps), opt)
    rng = np.random.default_rng(0)
    batch = (Tensor(rng.integers(0, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)),
             Tensor(np.tile(np.arange(a.seq, dtype=np.int32), (a.batch, 1))),
             Tensor(np.tile(np.tril(np.ones((a.seq, a.seq), np.float32)), (a.batch, 1, 1))))
    for _ in range(a.warmup):
        trainer.step([batch])
    t0 = time.perf_counter()
    for _ in range(a.steps):
        trainer.step([batch])
    dt = (time.perf_counter() - t0) / a.steps
    print(json.dumps({"tokens_per_s": a.batch * a.seq / dt, "step_s": dt, "params": count_parameters(cfg)}))


def run_one(system: str, shape: dict, a: argparse.Namespace) -> float | None:
    """tokens/s of `system` on `shape` in a fresh process (None if it cannot run here)."""
    flags = [f"--{k}={v}" for k, v in shape.items()] + [f"--steps={a.steps}", f"--warmup={a.warmup}"]
    if system == "ours":
        cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--worker", *flags]
    else:
        python = a.torch_python if system == "torch" else a.mf_python
        script = Path(a.shared_bench) / ("torch_pangu.py" if system == "torch" else "mindformers_pangu.py")
        if not (python and Path(python).is_file() and script.is_file()):
            flag = "--torch-python" if system == "torch" else "--mf-python"
            emit(metric="skipped", system=system, reason=f"needs {flag} (a venv's python, see "
                 f"shared/bench/README.md) and {script}")
            return None
        cmd = [python, str(script), *flags]
    env = {**os.environ, "GLOG_v": "3"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        print(json.dumps({"metric": "error", "system": system, "rc": done.returncode,
                          "stderr": done.stderr[-500:]}), flush=True)
        return None
    return float(json.loads(lines[-1])["tokens_per_s"])


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in SHAPE_FLAGS:
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile + slow first launches)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of ours/torch/mindformers per shape")
    p.add_argument("--peers", default="torch,mindformers", help="comma list, or 'none'")
    p.add_argument("--torch-python", default=None, help="python of a venv with torch (shared/bench/README.md)")
    p.add_argument("--mf-python", default=None, help="python of a venv with mindformers 1.3.2")
    p.add_argument("--shared-bench", default=str(SHARED_BENCH), help="folder of the peer scripts (default ../shared/bench)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    custom = {k: getattr(a, k) for k in SHAPE_FLAGS if getattr(a, k) is not None}
    shapes = {"custom": {**SHAPES["tiny"], **custom}} if custom else SHAPES
    peers = [] if a.peers == "none" else [x for x in a.peers.split(",") if x]
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(a.rounds):
        peak = matmul_peak_gflops()
        emit(metric="matmul_peak", value=round(peak, 1), unit="GFLOP/s", peer=None, ratio=None, round=r)
        for name, shape in shapes.items():
            measured = {s: run_one(s, shape, a) for s in ["ours", *peers]}
            for system, tps in measured.items():
                if tps is None:
                    continue
                results.setdefault((name, system), []).append(tps)
                peer = None if system == "ours" else system
                ratio = measured["ours"] / tps if peer and measured["ours"] else None
                emit(metric="train_tokens_per_s", value=round(tps, 1), unit="tokens/s", peer=peer,
                     ratio=round(ratio, 3) if ratio else None, shape=name, round=r)
                emit(metric="mfu", value=round(tps * flops_per_token(shape) / (peak * 1e9), 4), unit="fraction",
                     peer=peer, ratio=None, shape=name, round=r)
    for name in shapes:
        ours = results.get((name, "ours"))
        for system in ["ours", *peers]:
            vals = results.get((name, system))
            if not vals:
                continue
            med = statistics.median(vals)
            ratio = statistics.median(ours) / med if ours and system != "ours" else None
            emit(metric="median_train_tokens_per_s", value=round(med, 1), unit="tokens/s",
                 peer=None if system == "ours" else system, ratio=round(ratio, 3) if ratio else None,
                 shape=name, runs=[round(v, 1) for v in vals])


if __name__ == "__main__":
    main()
