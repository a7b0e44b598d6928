"""The slice math: hand-worked slices of the paper's layout, pieces that tile every tensor, and
the strategy file as MindSpore's reader and our own read it back."""
from __future__ import annotations

import numpy as np
import pytest

from ckpt_fixtures import LAYOUTS, ckpt_model_config
from pangu_ms.checkpoint.layout import CheckpointLayout, build_layout, layout_for, plan_parameters
from pangu_ms.errors import CheckpointError

V, H, F, S = 512, 128, 512, 16
B0 = "lm.backbone.blocks.0"


@pytest.fixture(scope="module")
def entries():
    """(name, shape, dtype) of a train Cell's save: weights, Adam moments, counters, position ints."""
    from mindspore import nn

    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss

    with nn.utils.no_init_parameters():
        net = PanguAlphaWithLoss(ckpt_model_config())
    weights = [(p.name, tuple(p.shape), "float32") for p in net.trainable_params()]
    moments = [(f"{k}.{n}", s, d) for k in ("adam_m", "adam_v") for n, s, d in weights]
    return weights + moments + [("global_step", (1,), "int32"), ("loss_scale", (), "float32"),
                                ("step", (), "int64")]


@pytest.fixture(scope="module")
def layouts(entries) -> dict[str, CheckpointLayout]:
    return {k: layout_for(ckpt_model_config(), p, entries) for k, p in LAYOUTS.items()}


def sl(a, b):
    return slice(a, b)


def test_mp4_vocab_parallel_slices_by_hand(layouts):
    lay = layouts["mp4_vocab"]
    r = 3  # mp index 3 of 4
    assert lay.region(r, f"{B0}.attention.linear_q.weight") == (sl(0, H), sl(96, 128))  # column-parallel: out dim
    assert lay.region(r, f"{B0}.attention.linear_q.bias") == (sl(96, 128),)
    assert lay.region(r, f"{B0}.attention.linear_out.weight") == (sl(96, 128), sl(0, H))  # row-parallel: in dim
    assert lay.region(r, f"{B0}.attention.linear_out.bias") == (sl(0, H),)  # added after the all-reduce: whole
    assert lay.region(r, f"{B0}.ffn.linear_fc1.weight") == (sl(0, H), sl(384, 512))
    assert lay.region(r, f"{B0}.ffn.linear_fc2.weight") == (sl(384, 512), sl(0, H))
    assert lay.region(r, f"{B0}.ln1.gamma") == (sl(0, H),)
    assert lay.region(r, "lm.backbone.word_embedding.embedding_table") == (sl(384, 512), sl(0, H))  # vocab rows
    assert lay.region(r, "lm.backbone.position_embedding.embedding_table") == (sl(0, S), sl(0, H))
    # the optimizer state follows its weight; counters are whole everywhere
    assert lay.region(r, f"adam_v.{B0}.ffn.linear_fc2.weight") == (sl(384, 512), sl(0, H))
    assert lay.region(r, "loss_scale") == () and lay.region(r, "global_step") == (sl(0, 1),)


def test_replicated_embedding_with_mp2(layouts):
    lay = layouts["mp2"]
    assert lay.region(1, "lm.backbone.word_embedding.embedding_table") == (sl(0, V), sl(0, H))
    assert lay.region(1, f"{B0}.attention.linear_k.weight") == (sl(0, H), sl(64, 128))


def test_optimizer_shard_cuts_dim0_over_the_ranks_holding_the_same_block(layouts):
    lay = layouts["dp2_mp2_opt"]  # ranks: 0=(dp0,mp0) 1=(dp0,mp1) 2=(dp1,mp0) 3=(dp1,mp1)
    fc1 = f"{B0}.ffn.linear_fc1.weight"  # [H, F] split over mp on F; block [128, 256] = 128 KB >= 64 KB
    assert lay.tensors[fc1].opt_shard == 2 and lay.tensors[fc1].local_shape == (64, 256)
    assert lay.region(3, fc1) == (sl(64, 128), sl(256, 512))  # dp index 1 takes the second half of the rows
    assert lay.region(1, fc1) == (sl(0, 64), sl(256, 512))
    # the replicated word table: all 4 ranks of the stage hold the same block, so 4 pieces by rank
    table = "lm.backbone.word_embedding.embedding_table"
    assert lay.tensors[table].opt_shard == 4
    assert [lay.region(r, table)[0] for r in range(4)] == [sl(0, 128), sl(128, 256), sl(256, 384), sl(384, 512)]
    # below MindSpore's 64 KB threshold nothing is cut: linear_q's block [128, 64] is 32 KB, LN gamma 512 B
    assert lay.tensors[f"{B0}.attention.linear_q.weight"].opt_shard == 1
    assert lay.tensors[f"{B0}.ln1.gamma"].opt_shard == 1
    assert lay.tensors[f"adam_m.{fc1}"].opt_shard == 2


def test_pipeline_stages_hold_their_layers_and_the_tied_table(layouts):
    lay = layouts["pp2"]  # 3 layers over 2 stages: blocks 0 and 1 on stage 0, the query layer on stage 1
    stage0, stage1 = set(lay.names_on(0)), set(lay.names_on(1))
    assert f"{B0}.ln1.gamma" in stage0 and f"{B0}.ln1.gamma" not in stage1
    assert "lm.backbone.query_layer.ln1.gamma" in stage1 and "lm.backbone.query_layer.ln1.gamma" not in stage0
    assert "lm.backbone.final_ln.gamma" in stage1 and "lm.backbone.top_query_embedding.embedding_table" in stage1
    assert "lm.backbone.word_embedding.embedding_table" in stage0 & stage1  # tied head on the last stage
    assert "lm.backbone.position_embedding.embedding_table" in stage0 - stage1
    assert {"loss_scale", "global_step", "step"} <= stage0 & stage1
    assert lay.region(1, f"{B0}.ln1.gamma") is None


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_distinct_pieces_tile_every_tensor_exactly(layouts, name):
    lay = layouts[name]
    for tensor, t in lay.tensors.items():
        count = np.zeros(t.shape, np.int32)
        pieces = lay.holders(tensor, tuple(slice(0, n) for n in t.shape))
        for _, region in pieces:
            count[region] += 1
        assert (count == 1).all(), (name, tensor)
        # every rank of a holding stage stores one of those pieces, of the local shape
        for rank in range(lay.world_size):
            region = lay.region(rank, tensor)
            if region is not None:
                assert tuple(s.stop - s.start for s in region) == t.local_shape
                assert region in [p for _, p in pieces]


@pytest.mark.parametrize("name", ["mp4_vocab", "dp2_mp2_opt", "pp2_dp2_mp2_opt"])
def test_strategy_file_reads_back_through_mindspore_and_our_reader(layouts, name, tmp_path):
    import mindspore as ms

    from pangu_ms.checkpoint.strategy import read_strategy_file, write_strategy_files

    lay = layouts[name]
    params = {n for n in lay.tensors if n.startswith("lm.")}
    write_strategy_files(tmp_path, lay, params)
    theirs = ms.build_searched_strategy(str(tmp_path / "strategy.ckpt"))  # MindSpore's own reader
    listed = {n for n, t in lay.tensors.items() if t.shape and (n.startswith("lm.") or n.startswith("adam_"))}
    if lay.pp > 1:
        assert set(theirs) == {f"{s}-{n}" for n in listed for s in lay.tensors[n].stages}
    else:
        assert set(theirs) == listed
    ours = read_strategy_file(tmp_path / "strategy.ckpt")
    per_stage = lay.dp * lay.mp
    for n in listed:
        t = lay.tensors[n]
        for rank in range(lay.world_size):
            if lay.region(rank, n) is not None:
                assert ours[n].region(rank % per_stage, t.shape) == lay.region(rank, n), (n, rank)


def test_layout_json_round_trip_and_refusals(layouts, entries):
    lay = layouts["pp2_dp2_mp2_opt"]
    assert CheckpointLayout.from_dict(lay.to_dict()) == lay
    params = plan_parameters(ckpt_model_config(), LAYOUTS["mp2"])
    bad = [(n, (s[0] + 1,) + s[1:] if n.endswith("linear_fc1.weight") and ".blocks.0." in n else s, d)
           for n, s, d in entries]
    with pytest.raises(CheckpointError, match=r"linear_fc1.weight' has shape \(129, 512\).*another model"):
        build_layout(bad, params, mp=2)
    assert layouts["dp2"].is_whole() and not layouts["mp2"].is_whole()
    assert layouts["mp2"].compatible(layouts["mp4_vocab"])  # another mesh: a reason is given
    c = layouts["pp2_dp2_mp2_opt"].coords(6)  # model-parallel fastest, then dp, then the stage
    assert (c.stage, c.dp, c.mp) == (1, 1, 0)
