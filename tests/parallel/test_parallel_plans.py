"""parallelize(): strategies read back from primitives, coverage, stages, recompute, fusion,
loss swap, and loud failures. No compiling: models are built and inspected."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from pangu_testing import tiny_model_config

from pangu_ms.config import ParallelConfig, RecomputeConfig
from pangu_ms.kernels.reference import TiedHeadCrossEntropy, VocabParallelCrossEntropy
from pangu_ms.models.pangu_alpha import PanguAlphaLM, PanguAlphaWithLoss
from pangu_ms.parallel import parallelize, plan_for
from pangu_ms.parallel.apply import PlanError, named_primitives
from pangu_ms.parallel.plans import REPLICATED, stage_of_layer
from pangu_ms.parallel.readback import read_back

ROOT = Path(__file__).resolve().parents[2]
MESHES = [ParallelConfig(dp=2, mp=2), ParallelConfig(dp=1, mp=2, pp=3, micro_batches=3),
          ParallelConfig(dp=4), ParallelConfig(mp=4, vocab_emb_dp=False)]


def reference_config(**model):
    """The tiny model with the reference kernels: what the plans address (Ascend's layout)."""
    return tiny_model_config(**{"kernels": "reference", **model})


def build(parallel: ParallelConfig, recompute: str = "none", **model):
    cfg = reference_config(**model)
    net = PanguAlphaWithLoss(cfg)
    return parallelize(net, plan_for(cfg, parallel, RecomputeConfig(mode=recompute)), parallel), cfg


@pytest.mark.parametrize("parallel", MESHES, ids=str)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_every_primitive_has_a_strategy_or_is_deliberately_replicated(parallel, dropout):
    net, cfg = build(parallel, dropout=dropout)
    plan = plan_for(cfg, parallel)
    replicated = {g for g, s in plan.strategies.items() if s is REPLICATED}
    for path, prim in named_primitives(net).items():
        strategy = prim.attrs.get("in_strategy")
        if strategy is None:
            assert any(re.fullmatch(g.replace(".", r"\.").replace("*", ".*"), path) for g in replicated), path
            assert type(prim).__name__ == "Cast", f"{path} left without a strategy"
        elif parallel.mp > 1 and type(prim).__name__ in ("MatMul", "BatchMatMul", "Softmax"):
            assert parallel.mp in {d for inp in strategy for d in inp}, f"{path} not model-parallel: {strategy}"


def test_paper_layout_strategies_read_back():
    net, _ = build(ParallelConfig(dp=2, mp=4, vocab_emb_dp=False), num_heads=4)
    blk = net.lm.backbone.blocks[1]
    s = lambda prim: prim.attrs["in_strategy"]  # noqa: E731
    assert s(blk.attention.linear_q.matmul) == ((2, 1), (1, 4))  # column-parallel
    assert s(blk.attention.linear_v.bias_add) == ((2, 4), (4,))
    assert s(blk.attention.linear_out.matmul) == ((2, 4), (4, 1))  # row-parallel
    assert s(blk.ffn.linear_fc1.matmul) == ((2, 1), (1, 4))
    assert s(blk.ffn.linear_fc2.matmul) == ((2, 4), (4, 1))
    assert s(blk.attention.core.qk_matmul) == ((2, 4, 1, 1), (2, 4, 1, 1))
    assert s(blk.attention.core.softmax) == ((2, 4, 1, 1),)
    assert s(blk.ln1.layer_norm) == ((2, 1), (1,), (1,)) and s(blk.residual_ffn) == ((2, 1), (2, 1))
    assert s(blk.ln2.residual_add) == ((2, 1), (2, 1))
    assert s(blk.ffn.linear_fc1.activation.bias_add) == ((2, 4), (4,)) and s(blk.ffn.linear_fc1.activation.act) == ((2, 4),)
    assert s(net.lm.backbone.attention_mask.same_doc) == ((2, 1, 1, 1), (2, 1, 1, 1))
    assert s(net.lm.vocab_proj) == ((2, 1), (4, 1)) == s(net.loss.head.vocab_proj)  # vocab-parallel logits
    assert s(net.lm.backbone.word_embedding.gather) == ((4, 1), (1, 1))
    assert isinstance(net.loss, VocabParallelCrossEntropy)
    assert s(net.loss.max) == ((2, 4),) and s(net.loss.sum) == ((2, 4),)


def test_replicated_embedding_keeps_plain_loss_and_one_table_layout():
    net, _ = build(ParallelConfig(dp=2, mp=2, vocab_emb_dp=True))
    assert type(net.loss) is TiedHeadCrossEntropy
    assert net.lm.backbone.word_embedding.gather.attrs["in_strategy"] == ((1, 1), (2, 1))
    assert net.lm.vocab_proj.attrs["in_strategy"] == ((2, 1), (1, 1))


def test_pipeline_stages_shared_table_and_fusion():
    net, cfg = build(ParallelConfig(dp=1, mp=2, pp=3, micro_batches=3), num_layers=6)
    bb = net.lm.backbone
    assert stage_of_layer(6, 3) == [0, 0, 1, 1, 2, 2]
    assert [b.pipeline_stage for b in bb.blocks] == [0, 0, 1, 1, 2]
    assert bb.word_embedding.pipeline_stage == 0 and bb.position_embedding.pipeline_stage == 0
    for cell in (bb.final_ln, bb.query_layer, bb.top_query_embedding, net.lm, net.loss):
        assert cell.pipeline_stage == 2
    assert list(bb.word_embedding.embedding_table._pipeline_stage_list) == [0, 2]
    assert isinstance(net.loss, VocabParallelCrossEntropy)  # pipelining forces the vocab split
    fusion = read_back(net)["comm_fusion"]
    assert fusion["lm.backbone.word_embedding"] == 1 and fusion["lm.backbone.blocks.0"] == 2
    assert fusion["lm.backbone.blocks.4"] == 3 and fusion["lm.backbone.query_layer"] == 3


def test_stage_of_layer_is_even_and_ordered():
    for layers, pp in ((64, 16), (32, 1), (40, 8), (7, 3)):
        st = stage_of_layer(layers, pp)
        counts = [st.count(s) for s in range(pp)]
        assert st == sorted(st) and st[-1] == pp - 1 and max(counts) - min(counts) <= 1


@pytest.mark.parametrize("mode,cells", [("full", {"lm.backbone.blocks.*", "lm.backbone.query_layer"}),
                                        ("selective", {"lm.backbone.blocks.*.attention.core",
                                                       "lm.backbone.query_layer.attention.core"}),
                                        ("none", set())])
def test_recompute_modes(mode, cells):
    net, _ = build(ParallelConfig(dp=2), recompute=mode)
    assert set(read_back(net)["recompute"]) == cells


def test_bare_lm_is_accepted():
    cfg = reference_config()
    lm = PanguAlphaLM(cfg)
    parallelize(lm, plan_for(cfg, ParallelConfig(mp=2)), ParallelConfig(mp=2))
    assert lm.backbone.blocks[0].ffn.linear_fc1.matmul.attrs["in_strategy"] == ((1, 1), (1, 2))


def test_glob_matching_nothing_fails():
    cfg = reference_config()
    plan = plan_for(cfg, ParallelConfig(mp=2))
    bad = dataclasses.replace(plan, strategies={**plan.strategies, "lm.backbone.blocks.*.attention.qkv": ((),)})
    with pytest.raises(PlanError, match="'lm.backbone.blocks.\\*.attention.qkv' matches no primitive"):
        parallelize(PanguAlphaWithLoss(cfg), bad, ParallelConfig(mp=2))


def test_uncovered_primitive_fails():
    cfg = reference_config()
    plan = plan_for(cfg, ParallelConfig(mp=2))
    strategies = {k: v for k, v in plan.strategies.items() if not k.endswith("linear_fc1.activation.act")}
    with pytest.raises(PlanError, match="3 primitive\\(s\\) have no plan entry.*activation.act"):
        parallelize(PanguAlphaWithLoss(cfg), dataclasses.replace(plan, strategies=strategies), ParallelConfig(mp=2))


def test_tied_table_layout_mismatch_fails():
    cfg = reference_config()
    plan = plan_for(cfg, ParallelConfig(mp=2, vocab_emb_dp=False))
    bad = dataclasses.replace(plan, strategies={**plan.strategies, "lm.vocab_proj": (("batch", None), (None, None))})
    with pytest.raises(PlanError, match="tied embedding table"):
        parallelize(PanguAlphaWithLoss(cfg), bad, ParallelConfig(mp=2, vocab_emb_dp=False))


def test_indivisible_parameter_fails():
    cfg = reference_config(ffn_hidden_size=66)
    with pytest.raises(PlanError, match="linear_fc1.weight' dim 1 of size 66 is not divisible by its split 4"):
        parallelize(PanguAlphaWithLoss(cfg), plan_for(cfg, ParallelConfig(mp=4)), ParallelConfig(mp=4))



def test_parallelize_job_uses_the_mesh_in_use_and_recompute():
    from pangu_ms.config import JobConfig
    from pangu_ms.parallel import ParallelInfo, parallelize_job

    cfg = reference_config()
    job = JobConfig(model=cfg, parallel=ParallelConfig(dp=1), recompute=RecomputeConfig(mode="full"))
    net = parallelize_job(PanguAlphaWithLoss(cfg), job, ParallelInfo(parallel=ParallelConfig(dp=2)))
    assert net.lm.backbone.blocks[0].ln1.layer_norm.attrs["in_strategy"] == ((2, 1), (1,), (1,))
    assert "lm.backbone.blocks.*" in read_back(net)["recompute"]


def test_ascend_train_step_wraps_micro_batches():
    """Construction only: the Ascend step cannot be compiled on CPU."""
    from mindspore import nn as msnn
    from mindspore.parallel.nn import GradAccumulation, Pipeline

    from pangu_ms.config import JobConfig, TrainConfig
    from pangu_ms.train.ascend import ascend_train_cell

    cfg = reference_config()
    for parallel, accum, kind in ((ParallelConfig(mp=2, pp=2, micro_batches=4), 1, Pipeline),
                                  (ParallelConfig(dp=2), 2, GradAccumulation)):
        job = JobConfig(model=cfg, parallel=parallel, train=TrainConfig(global_batch_size=8, grad_accum_steps=accum))
        net = parallelize_job_for(job)
        opt = msnn.AdamWeightDecay(net.trainable_params(), 1e-4)
        step = ascend_train_cell(net, opt, job)
        assert isinstance(step.network, kind)
        assert len(step.reducer.accu_grads) == len(net.trainable_params())
        assert step.clip_norm == job.optimizer.clip_norm  # the one update of pangu_ms.train.step


def parallelize_job_for(job):
    from pangu_ms.parallel import parallelize_job

    return parallelize_job(PanguAlphaWithLoss(job.model), job)
