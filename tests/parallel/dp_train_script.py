"""Train a tiny PanGu-alpha for a few steps; run standalone or as an msrun worker.

    python dp_train_script.py OUT_DIR single   # one process, full batch, no parallelize()
    msrun --worker_num=2 ... dp_train_script.py OUT_DIR dp
        # each worker: init_parallel() (DATA_PARALLEL), parallelize() with dp=2 and full
        # recompute, its half of the batch; TrainOneStepCell all-reduces mean gradients (SGD)

Writes OUT_DIR/<mode>_rank<r>.npz with the per-step losses, the final weights and (`init:` names)
the initial ones.
"""
from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

from pangu_ms.config import JobConfig, ModelConfig, ParallelConfig, RecomputeConfig, TrainConfig  # noqa: E402
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss  # noqa: E402

STEPS, GLOBAL_BATCH = 4, 8


def batch(step: int, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The global batch of `step`: ids [B, S+1] (no pad id), positions [B, S], document ids [B, S]
    (one document per row: a plain causal mask)."""
    rng = np.random.default_rng(100 + step)
    ids = rng.integers(cfg.pad_id + 1, cfg.vocab_size, size=(GLOBAL_BATCH, cfg.seq_length + 1)).astype(np.int32)
    pos = np.tile(np.arange(cfg.seq_length, dtype=np.int32), (GLOBAL_BATCH, 1))
    doc = np.zeros((GLOBAL_BATCH, cfg.seq_length), np.int32)
    return ids, pos, doc


def main(out_dir: str, mode: str) -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = ModelConfig(vocab_size=96, seq_length=16, num_layers=3, hidden_size=32, ffn_hidden_size=64,
                      num_heads=4, dropout=0.0)
    job = JobConfig(model=cfg, parallel=ParallelConfig(dp=2 if mode == "dp" else 1),
                    recompute=RecomputeConfig(mode="full"), train=TrainConfig(global_batch_size=GLOBAL_BATCH))
    rank, shards = 0, 1
    ms.set_seed(0)
    net = PanguAlphaWithLoss(cfg)  # built before init so both modes draw the same initial weights
    if mode == "dp":
        from pangu_ms.parallel import init_parallel, parallelize, plan_for

        info = init_parallel(job)
        assert info.is_distributed and info.dp_size == 2, info
        rank, shards = info.dp_rank, info.dp_size
        parallelize(net, plan_for(cfg, job.parallel, job.recompute, kernels=net.kernel_spec), job.parallel)
    # plain SGD: the update is proportional to the gradient, so averaging (not summing) over
    # ranks shows in the weights (Adam would normalise a factor of 2 away)
    train = nn.TrainOneStepCell(net, nn.SGD(net.trainable_params(), learning_rate=0.5))
    initial = {f"init:{p.name}": p.asnumpy().copy() for p in net.trainable_params()}
    rows = GLOBAL_BATCH // shards
    losses = []
    for step in range(STEPS):
        ids, pos, doc = (a[rank * rows:(rank + 1) * rows] for a in batch(step, cfg))
        losses.append(float(train(Tensor(ids), Tensor(pos), Tensor(doc)).asnumpy()))
    weights = {p.name: p.asnumpy() for p in net.trainable_params()}
    np.savez(os.path.join(out_dir, f"{mode}_rank{rank}.npz"), losses=np.array(losses), **weights, **initial)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
