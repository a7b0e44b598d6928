"""Shared pieces of the checkpoint tests: a trained tiny model's full train-Cell tensors and the
layouts the reshard matrix covers (imported as `from ckpt_fixtures import ...`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pangu_testing import tiny_model_config
from pangu_ms.config import JobConfig, ParallelConfig

# big enough that some tensors pass MindSpore's 64 KB optimizer-shard threshold (fc1/fc2 and the
# word table), small enough to train two steps in seconds
CKPT_MODEL = dict(vocab_size=512, hidden_size=128, ffn_hidden_size=512, num_heads=4, num_layers=3, seq_length=16)

LAYOUTS: dict[str, ParallelConfig] = {
    "whole": ParallelConfig(),
    "dp2": ParallelConfig(dp=2),
    "mp2": ParallelConfig(mp=2),
    "mp4_vocab": ParallelConfig(mp=4, vocab_emb_dp=False),
    "dp2_mp2_opt": ParallelConfig(dp=2, mp=2, optimizer_shard=True),
    "pp2": ParallelConfig(pp=2, micro_batches=2),
    "pp2_dp2_mp2_opt": ParallelConfig(dp=2, mp=2, pp=2, optimizer_shard=True, micro_batches=2),
}
"""mp 2 and 4, pp 2, optimizer sharding on and off, the replicated and the vocab-parallel embedding."""


def ckpt_model_config():
    return tiny_model_config(**CKPT_MODEL)


def trained_tensors(steps: int = 2, seed: int = 11) -> dict[str, np.ndarray]:
    """Every tensor `save_checkpoint(train_cell)` writes after `steps` real AdamW steps (weights, Adam
    moments, global step, loss scale and its counters) plus the loop's position ints."""
    import mindspore as ms
    from mindspore import Tensor

    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
    from pangu_ms.train.optimizer import build_optimizer
    from pangu_ms.train.step import Trainer

    cfg = ckpt_model_config()
    job = JobConfig(model=cfg)
    ms.set_seed(seed)
    net = PanguAlphaWithLoss(cfg)
    trainer = Trainer(net, build_optimizer(net.trainable_params(), job.optimizer, job.schedule, 10), job.optimizer)
    rng = np.random.default_rng(seed)
    b, s = 2, cfg.seq_length
    for _ in range(steps):
        ids = rng.integers(10, cfg.vocab_size, (b, s + 1)).astype(np.int32)
        pos = np.tile(np.arange(s, dtype=np.int32), (b, 1))
        doc = np.zeros((b, s), np.int32)  # one document per row: a plain causal mask
        trainer.step([(Tensor(ids), Tensor(pos), Tensor(doc))])
    out = {p.name: p.asnumpy() for p in trainer.cell.get_parameters()}
    out.update(step=np.array(steps, np.int64), data_step=np.array(steps, np.int64),
               tokens_seen=np.array(steps * b * s, np.int64))
    assert np.abs(out["adam_m.lm.backbone.blocks.0.ffn.linear_fc1.weight"]).max() > 0  # really trained
    return out


def write_layout(root: Path, name: str, tensors: dict[str, np.ndarray], step: int = 2) -> Path:
    """The per-rank files of `tensors` under layout `name`, as MindSpore names and shapes them
    under semi-auto parallel (rank_<r>/ of local slices) with a MindSpore strategy file."""
    from pangu_ms.checkpoint import store
    from pangu_ms.checkpoint.layout import layout_for
    from pangu_ms.checkpoint.reshard import write_step

    job = JobConfig(model=ckpt_model_config(), parallel=LAYOUTS[name])
    layout = layout_for(job.model, job.parallel, [(n, a.shape, a.dtype.name) for n, a in tensors.items()])
    return write_step(store.checkpoints_root(root / name), step, layout, lambda n: tensors[n],
                      meta={"step": step, "data_step": step, "tokens_seen": 0}, config_yaml=job.to_yaml(),
                      tokenizer_dir=None, params={n for n in tensors if n.startswith("lm.")})


def job_for(name: str) -> JobConfig:
    return JobConfig(model=ckpt_model_config(), parallel=LAYOUTS[name])
