#!/usr/bin/env python
"""Time and peak memory of `checkpoint merge` and `checkpoint reshard` on a synthetic checkpoint.

Builds the per-rank checkpoint a run of the given model and layout would write (weights and both
AdamW moments, random values), then merges it and reshards it to another layout, each in a fresh
process that reports its own peak: NumPy allocations traced by tracemalloc, and the growth of the
process's peak RSS over its RSS just before the merge (file pages mapped for reading count in RSS
while they are touched). Prints one JSON line.

    python bench/checkpoint_merge.py [--config ascend_configs/models/pangu_alpha_small.yaml]
        [--layout dp=2,mp=2,pp=2,optimizer_shard=1] [--to mp=4,vocab_emb_dp=0] [--vocab N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, tracemalloc
from pathlib import Path
from pangu_ms.checkpoint import reshard as R
from pangu_ms.config import JobConfig, ModelConfig, ParallelConfig
src, out, mode, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
def rss_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
import mindspore  # noqa: F401  (imported before measuring: the strategy file needs its protobuf module)
job = None
if mode == "reshard":
    job = JobConfig(model=ModelConfig(**extra["model"]), parallel=ParallelConfig(**extra["parallel"]))
    from pangu_ms.checkpoint.layout import plan_parameters
    plan_parameters(job.model, job.parallel)  # import MindSpore and build the plan before measuring
before = rss_kib()
tracemalloc.start()
t0 = time.perf_counter()
R.merge(src, out) if mode == "merge" else R.reshard(src, job, out)
seconds = time.perf_counter() - t0
_, traced = tracemalloc.get_traced_memory()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "traced_peak_bytes": traced, "rss_before_kib": before,
                  "rss_peak_kib": peak, "rss_growth_bytes": max(0, peak - before) * 1024}))
"""


def parse_mesh(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        out[k] = bool(int(v)) if k in ("optimizer_shard", "vocab_emb_dp") else int(v)
    if out.get("pp", 1) > 1:
        out.setdefault("micro_batches", out["pp"])
    return out


def build(args, root: Path) -> tuple[Path, dict, int, int]:
    import numpy as np
    from mindspore import nn

    from pangu_ms.checkpoint.layout import layout_for
    from pangu_ms.checkpoint.reshard import write_step
    from pangu_ms.config import ParallelConfig, load_config
    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    cfg = load_config(args.config).model
    if args.vocab:
        cfg = type(cfg)(**{**cfg.__dict__, "vocab_size": args.vocab})
    with nn.utils.no_init_parameters():
        lm = PanguAlphaLM(cfg)
    shapes = {f"lm.{n}": tuple(p.shape) for n, p in lm.parameters_and_names()}
    shapes.update({f"{k}.{n}": s for k in ("adam_m", "adam_v") for n, s in list(shapes.items())})
    layout = layout_for(cfg, ParallelConfig(**parse_mesh(args.layout)), [(n, s, "float32") for n, s in shapes.items()])
    rng = np.random.default_rng(0)
    src = write_step(root / "src", 1, layout, lambda n: rng.standard_normal(shapes[n], dtype=np.float32),
                     meta={"step": 1}, config_yaml=None, tokenizer_dir=None, params=set())
    largest = max(int(np.prod(s)) * 4 for s in shapes.values())
    total = sum(int(np.prod(s)) * 4 for s in shapes.values())
    return src, {k: v for k, v in cfg.__dict__.items()}, largest, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ascend_configs/models/pangu_alpha_small.yaml")
    p.add_argument("--layout", default="dp=2,mp=2,pp=2,optimizer_shard=1")
    p.add_argument("--to", default="mp=4,vocab_emb_dp=0")
    p.add_argument("--vocab", type=int, default=0, help="override the vocabulary size (a bigger largest tensor)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as tmp:
        root = Path(tmp)
        src, model, largest, total = build(args, root)
        env = {**os.environ, "GLOG_v": "3"}
        runs = {}
        for mode in ("merge", "reshard"):
            extra = json.dumps({"model": model, "parallel": parse_mesh(args.to)})
            done = subprocess.run([sys.executable, "-c", CHILD, str(src), str(root / mode), mode, extra],
                                  capture_output=True, text=True, env=env, timeout=3600)
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({"config": args.config, "layout": args.layout, "to": args.to, "largest_tensor_bytes": largest,
                      "checkpoint_bytes": total, **{f"{m}_{k}": v for m, r in runs.items() for k, v in r.items()}}))


if __name__ == "__main__":
    main()
