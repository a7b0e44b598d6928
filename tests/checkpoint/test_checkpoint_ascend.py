"""The per-rank checkpoint of the Ascend step as far as CPU goes: the AutoParallel-wrapped train
step is built without weights (it cannot compile here), and the Checkpointer's layout must name
every tensor MindSpore's save of that Cell writes, give accumulators and Adam moments their
weight's slices and put on a rank only what its stage holds (hand-worked below); it looks for
MindSpore's strategy file where the step has it written."""
from __future__ import annotations

import sys
from pathlib import Path

from ckpt_fixtures import ckpt_model_config
from pangu_ms.checkpoint.layout import STATE_PREFIXES, base_name
from pangu_ms.checkpoint.training import POSITION_KEYS, Checkpointer
from pangu_ms.config import JobConfig, ParallelConfig, RunConfig, TrainConfig
from pangu_ms.parallel.context import read_auto_parallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from test_parallel_ascend import info_for  # noqa: E402  (one way to make a rank's ParallelInfo)

H, F = 128, 512
TABLE = "lm.backbone.word_embedding.embedding_table"
FC1_LAST = "lm.backbone.query_layer.ffn.linear_fc1.weight"  # the query layer is the last, on stage 1
FC1_FIRST = "lm.backbone.blocks.0.ffn.linear_fc1.weight"


def test_checkpointer_layout_covers_the_ascend_step(tmp_path):
    from pangu_ms.train.ascend import build_ascend_trainer

    p = ParallelConfig(dp=2, mp=2, pp=2, micro_batches=4, optimizer_shard=True, vocab_emb_dp=False)
    job = JobConfig(model=ckpt_model_config(), parallel=p, train=TrainConfig(global_batch_size=16),
                    run=RunConfig(output_dir=str(tmp_path)))
    info = info_for(p, 5)  # stage 1, dp 0, mp 1 (mp fastest, then dp, then stage)
    _, trainer = build_ascend_trainer(job, info)  # MindSpore's strategy file under run.output_dir
    ck = Checkpointer(tmp_path, trainer.cell, job, info)
    # the Checkpointer compares its slices with the strategy file MindSpore writes at compile
    assert str(ck.strategy_file) == read_auto_parallel(trainer.cell)["strategy_file"]

    saved = {q.name for q in trainer.cell.get_parameters()}
    assert set(ck.layout.tensors) == saved | set(POSITION_KEYS)
    prefixes = {n.split(".")[0] + "." for n in saved if n != base_name(n)}
    assert prefixes == {"adam_m.", "adam_v.", "accu_grads."} and prefixes <= set(STATE_PREFIXES)
    for name in saved:
        if base_name(name) != name:  # optimizer state and gradient accumulators follow their weight
            assert ck.layout.tensors[name] == ck.layout.tensors[base_name(name)], name

    lay = ck.layout
    # the vocab-parallel tied table: rows split over mp (256 each, 128 KB per block, so optimizer
    # sharding cuts it again over the dp=2 ranks holding that block); on the first and last stage
    assert lay.tensors[TABLE].local_shape == (128, H) and lay.tensors[TABLE].stages == (0, 1)
    assert lay.region(5, TABLE) == (slice(256, 384), slice(0, H))  # mp 1's half, dp 0's first quarter
    assert lay.region(5, f"accu_grads.{TABLE}") == lay.region(5, TABLE)
    # fc1 [H, F] split over mp on F, then dp-sharded on rows
    assert lay.region(5, FC1_LAST) == (slice(0, 64), slice(256, 512))
    assert lay.region(7, FC1_LAST) == (slice(64, 128), slice(256, 512))  # rank 7: stage 1, dp 1, mp 1
    on_rank5 = set(lay.names_on(5))
    assert FC1_FIRST not in on_rank5 and f"adam_m.{FC1_FIRST}" not in on_rank5  # block 0 lives on stage 0
    assert FC1_FIRST in set(lay.names_on(1)) and FC1_LAST not in set(lay.names_on(1))
    assert {"loss_scale", "global_step", "step"} <= on_rank5
