"""The planner's memory model against peak RSS of real CPU train steps.

    python bench/planner_memory.py --calibrate   # fit the CPU constants on tiny-model variants
    python bench/planner_memory.py --check       # tiny and small models: predicted vs measured

Each measurement is its own process: build PanguAlphaWithLoss, parallelize it (recompute
mode), AdamW and the train step, run 3 steps on random rows, report peak RSS
(`ru_maxrss`). RSS is steadier than time on a shared machine: repeated runs agree within a
few MB.

The models run the configs' `kernels: fused`, which on CPU is the C++ spec (`cpu_fused`: flash
attention on the document ids, fused AddLayerNorm, bias + GeLU, tied-head loss and AdamW); each
row records the spec it ran. MindSpore 2.10's CPU backend keeps every intermediate tensor of the
step's graph alive (peak RSS grows with full recompute instead of shrinking), so the terms
derived for Ascend do not apply to it. `--calibrate` fits the CPU's own constants by least
squares, on tiny-model variants (layers, batch, sequence, vocabulary and width varied), to
    peak = base + sigma N + L (c_layer + c_TH,r T H) + c_TV T V
(N parameters, L layers, T = b s tokens, r the recompute mode) and prints them as JSON for the
CPU entry of pangu_ms/parallel/hardware.py. There is no a s^2 b term: the fused attention stores
no S x S tensor (tiny with 2 or 32 heads peaks within 2 MB of each other). `--check` measures
configurations the fit never saw (the `small` model, other batch sizes) and prints each against
the planner's prediction (`memory_report(..., device_spec("CPU"))`), one JSON line per run, then
the largest error; it stops if a run built other kernels than the constants describe.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "selective", "full")

# (model yaml, overrides, batch): variants of the tiny model, for the fit
CALIBRATION = [("tiny", {"num_layers": L, "seq_length": s, "vocab_size": v, "hidden_size": h,
                         "ffn_hidden_size": 4 * h}, b)
               for (L, b, s, v, h) in [(2, 1, 256, 8000, 256), (2, 4, 256, 8000, 256), (4, 1, 256, 8000, 256),
                                       (4, 4, 256, 8000, 256), (2, 4, 128, 8000, 256), (2, 4, 512, 8000, 256),
                                       (2, 4, 256, 16000, 256), (2, 1, 256, 8000, 384), (4, 1, 256, 8000, 384),
                                       (2, 4, 256, 8000, 384), (4, 4, 256, 8000, 384), (2, 1, 256, 8000, 128),
                                       (2, 4, 256, 8000, 128), (4, 4, 256, 8000, 128)]]
# held out: never seen by the fit
CHECK = [("tiny", {}, b) for b in (2, 8)] + [("small", {}, b) for b in (1, 2, 4, 8)]


def measure_one(model: str, overrides: dict, batch: int, mode: str) -> dict:
    """Run in this process: 3 train steps, return the peak RSS and the model's shape."""
    os.environ.setdefault("GLOG_v", "3")
    import numpy as np
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from pangu_ms.config import ParallelConfig, RecomputeConfig, load_config
    from pangu_ms.data.dataset import eod_reset
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, count_parameters
    from pangu_ms.parallel.apply import parallelize
    from pangu_ms.parallel.plans import plan_for
    from pangu_ms.train.optimizer import build_optimizer
    from pangu_ms.train.step import Trainer

    job = load_config(ROOT / "ascend_configs" / "models" / f"pangu_alpha_{model}.yaml",
                      [f"model.{k}={v}" for k, v in overrides.items()])
    cfg = job.model
    ms.set_seed(0)
    net = PanguAlphaWithLoss(cfg)
    plan = plan_for(cfg, ParallelConfig(), RecomputeConfig(mode=mode), kernels=net.kernel_spec)
    parallelize(net, plan, ParallelConfig())
    trainer = Trainer(net, build_optimizer(net.trainable_params(), job.optimizer, job.schedule, 10), job.optimizer)
    rows = np.random.default_rng(0).integers(10, cfg.vocab_size, (batch, cfg.seq_length + 1)).astype(np.int32)
    pos, doc = eod_reset(rows, cfg.eod_id)
    data = (ms.Tensor(rows), ms.Tensor(pos), ms.Tensor(doc))
    for _ in range(3):
        trainer.step([data])
    return {"model": model, "overrides": overrides, "batch": batch, "recompute": mode, "kernels": net.kernel_spec.name,
            "params": count_parameters(cfg), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(model: str, overrides: dict, batch: int, mode: str) -> dict:
    """`measure_one` in a fresh process (peak RSS is per process)."""
    cmd = [sys.executable, __file__, "--one", json.dumps([model, overrides, batch, mode])]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "GLOG_v": "3"},
                         check=False)
    if res.returncode:
        raise RuntimeError(f"measurement {model} {overrides} b={batch} {mode} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _model_cfg(model: str, overrides: dict):
    from pangu_ms.config import load_config

    return load_config(ROOT / "ascend_configs" / "models" / f"pangu_alpha_{model}.yaml",
                       [f"model.{k}={v}" for k, v in overrides.items()]).model


def features(row: dict) -> list[float]:
    """Design-matrix row: base, sigma, c_layer, then c_TH per mode, then c_TV."""
    cfg = _model_cfg(row["model"], row["overrides"])
    b, s, h, v, L = row["batch"], cfg.seq_length, cfg.hidden_size, cfg.vocab_size, cfg.num_layers
    per_mode = [(1.0 if row["recompute"] == mode else 0.0) * L * b * s * h for mode in MODES]
    return [1.0, float(row["params"]), float(L), *per_mode, float(b * s * v)]


def calibrate() -> dict:
    import numpy as np

    rows = [measure(m, o, b, mode) for mode in MODES for (m, o, b) in CALIBRATION]
    for r in rows:
        print(json.dumps({"calibration": r}), flush=True)
    if len({r["kernels"] for r in rows}) != 1:
        raise RuntimeError(f"calibration runs used different kernels: {sorted({r['kernels'] for r in rows})}")
    x = np.array([features(r) for r in rows])
    y = np.array([r["peak_rss_mb"] * 2**20 for r in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ coef
    out = {"kernels": rows[0]["kernels"], "base": coef[0], "states": {"sigma": coef[1], "layer": coef[2]},
           "head": {"TV": coef[-1]}}
    for i, mode in enumerate(MODES):
        out[mode] = {"TH": coef[3 + i]}
    out["max_fit_error"] = float(np.max(np.abs(fitted - y) / y))
    return out


def predict(row: dict) -> float:
    """The planner's CPU prediction (bytes) for a measured configuration."""
    from pangu_ms.config import ParallelConfig
    from pangu_ms.parallel.hardware import device_spec
    from pangu_ms.parallel.memory import Step, memory_report

    step = Step(_model_cfg(row["model"], row["overrides"]), ParallelConfig(), row["recompute"], row["batch"])
    return memory_report(step, device_spec("CPU"))["per_stage"][0]["pool_total"]


def check() -> float:
    from pangu_ms.parallel.hardware import device_spec

    worst, fitted_on = 0.0, device_spec("CPU").measured_kernels
    for mode in MODES:
        for (m, o, b) in CHECK:
            row = measure(m, o, b, mode)
            if row["kernels"] != fitted_on:
                raise RuntimeError(f"{m} b={b} ran the {row['kernels']} kernels; the CPU constants describe "
                                   f"{fitted_on}")
            pred = predict(row) / 2**20
            err = pred / row["peak_rss_mb"] - 1
            worst = max(worst, abs(err))
            print(json.dumps({**row, "predicted_mb": round(pred, 1), "error": round(err, 4)}), flush=True)
    print(json.dumps({"max_abs_error": round(worst, 4)}))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*json.loads(args.one))))
        return 0
    if args.calibrate:
        print(json.dumps({"cpu_constants": calibrate()}, default=float))
    if args.check:
        return 0 if check() <= 0.20 else 1
    if not (args.calibrate or args.check):
        ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
