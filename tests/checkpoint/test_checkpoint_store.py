"""Step directories: completeness (missing, truncated, corrupt rank files; no manifest), pruning of
whole steps, `checkpoint inspect`, and a Checkpointer's save, resume, fallback and refusals."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from ckpt_fixtures import ckpt_model_config, trained_tensors, write_layout
from pangu_ms.checkpoint import store
from pangu_ms.checkpoint.report import format_report, inspect_checkpoints
from pangu_ms.errors import CheckpointError


@pytest.fixture(scope="module")
def tensors():
    return trained_tensors()


@pytest.fixture()
def four_ranks(tmp_path, tensors):
    return write_layout(tmp_path, "dp2_mp2_opt", tensors)


def test_a_complete_step_lists_every_file_with_size_and_checksum(four_ranks):
    status = store.check_step(four_ranks, verify_ranks=[-1])
    assert status.complete and status.world_size == 4 and sorted(status.rank_bytes) == [0, 1, 2, 3]
    manifest = json.loads((four_ranks / "manifest.json").read_text())
    for r in range(4):
        f = four_ranks / f"rank_{r}" / "model.safetensors"
        assert manifest["files"][f"rank_{r}/model.safetensors"]["bytes"] == f.stat().st_size
        info = json.loads((four_ranks / f"rank_{r}" / "rank.json").read_text())
        assert info["coords"] == {"stage": 0, "dp": r // 2, "mp": r % 2} and info["mesh"]["optimizer_shard"]
    assert {"layout.json", "strategy.ckpt", "meta.json", "config.yaml"} <= set(manifest["files"])


def test_missing_truncated_and_corrupt_rank_files_make_the_step_incomplete(four_ranks, tmp_path):
    copies = {k: tmp_path / k / four_ranks.name for k in ("missing", "truncated", "flipped", "unfinished")}
    for d in copies.values():
        shutil.copytree(four_ranks, d)
    shutil.rmtree(copies["missing"] / "rank_2")
    f = copies["truncated"] / "rank_1" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    g = copies["flipped"] / "rank_3" / "model.safetensors"
    blob = bytearray(g.read_bytes())
    blob[len(blob) // 2] ^= 1
    g.write_bytes(bytes(blob))
    (copies["unfinished"] / "manifest.json").unlink()

    assert "rank_2/model.safetensors is missing" in store.check_step(copies["missing"]).problems
    assert any("rank_1/model.safetensors has" in p and "truncated" in p
               for p in store.check_step(copies["truncated"]).problems)
    assert store.check_step(copies["flipped"]).complete  # a same-size bit flip needs the checksum
    assert store.check_step(copies["flipped"], verify_ranks=[3]).problems == [
        "rank_3/model.safetensors: sha256 differs from the manifest (corrupt)"]
    assert not store.check_step(copies["unfinished"]).complete
    report = inspect_checkpoints(copies["missing"].parent, verify=True)
    assert report["newest_complete"] is None and report["steps"][0]["missing_ranks"] == [2]
    assert "INCOMPLETE" in format_report(report) and "missing ranks: [2]" in format_report(report)


def test_prune_keeps_whole_complete_steps(tmp_path, tensors):
    root = tmp_path / "run"
    for step in (2, 4, 6, 8):
        d = write_layout(tmp_path / f"s{step}", "mp2", tensors, step=step)
        shutil.copytree(d, store.checkpoints_root(root) / d.name)
    (store.checkpoints_root(root) / "step_00000008" / "manifest.json").unlink()  # 8 never completed
    gone = store.prune(store.checkpoints_root(root), keep_last=2)
    assert [d.name for d in gone] == ["step_00000002"]
    assert [d.name for d in store.list_step_dirs(root)] == ["step_00000008", "step_00000006", "step_00000004"]


def _trainer(seed: int):
    import mindspore as ms

    from pangu_ms.config import JobConfig
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
    from pangu_ms.train.optimizer import build_optimizer
    from pangu_ms.train.step import Trainer

    job = JobConfig(model=ckpt_model_config())
    job.tokenizer.path = "no_tokenizer"
    job.checkpoint.keep_last = 5
    ms.set_seed(seed)
    net = PanguAlphaWithLoss(job.model)
    return job, Trainer(net, build_optimizer(net.trainable_params(), job.optimizer, job.schedule, 10), job.optimizer)


def _values(cell) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy() for p in cell.get_parameters()}


def test_checkpointer_resumes_bitwise_and_falls_back_past_a_corrupt_rank_file(tmp_path, caplog):
    from mindspore import Tensor

    from pangu_ms.checkpoint.training import Checkpointer

    job, a = _trainer(1)
    saver = Checkpointer(tmp_path / "run", a.cell, job)
    saver.save(step=2, data_step=2, tokens_seen=64)
    older = _values(a.cell)
    first = next(iter(a.cell.get_parameters()))
    first.set_data(Tensor(first.asnumpy() * 2))  # step 4 holds other weights than step 2
    saver.save(step=4, data_step=4, tokens_seen=128)
    newest = store.checkpoints_root(tmp_path / "run") / "step_00000004" / "rank_0" / "model.safetensors"
    blob = bytearray(newest.read_bytes())
    blob[-10] ^= 0xFF
    newest.write_bytes(bytes(blob))

    _, b = _trainer(2)
    with caplog.at_level(logging.WARNING):
        state = Checkpointer(tmp_path / "run", b.cell, job).resume(tmp_path / "run")
    assert (state.step, state.data_step, state.tokens_seen) == (2, 2, 64)
    assert "skipping checkpoint" in caplog.text and "sha256 differs" in caplog.text
    assert "step_00000002, the newest step complete on every rank" in caplog.text
    got = _values(b.cell)
    for n, v in older.items():
        np.testing.assert_array_equal(got[n], v, err_msg=n)


def test_resume_refuses_another_mesh_and_names_the_reshard_command(tmp_path, tensors):
    from pangu_ms.checkpoint.training import Checkpointer

    d = write_layout(tmp_path, "mp2", tensors)
    job, t = _trainer(3)
    with pytest.raises(CheckpointError, match=r"'mp': 2.*checkpoint reshard --ckpt"):
        Checkpointer(tmp_path / "x", t.cell, job).resume(d)


def test_a_rank_file_the_plan_did_not_predict_is_recorded_and_merge_refuses_it(tmp_path, caplog):
    from pangu_ms.checkpoint.inference import model_weights
    from pangu_ms.checkpoint.training import Checkpointer

    job, t = _trainer(4)
    saver = Checkpointer(tmp_path / "run", t.cell, job)
    name = "lm.backbone.final_ln.gamma"
    tl = saver.layout.tensors[name]
    saver.layout.tensors[name] = type(tl)(shape=tl.shape, dtype=tl.dtype, split=(2,))  # pretend the plan split it
    with caplog.at_level(logging.WARNING):
        step = saver.save(step=1, data_step=1, tokens_seen=1)  # training goes on: the rank can resume from it
    assert "final_ln.gamma saved (128,) expected (64,)" in caplog.text
    info = json.loads((step / "rank_0" / "rank.json").read_text())
    assert info["layout_mismatch"] == ["lm.backbone.final_ln.gamma saved (128,) expected (64,)"]
    with pytest.raises(CheckpointError, match=r"stores 'lm.backbone.final_ln.gamma' as \(128,\), the layout says"):
        model_weights(step)


def test_mindspores_own_strategy_file_is_compared_with_our_layout(tmp_path, tensors):
    from pangu_ms.checkpoint.strategy import compare_with_strategy

    same = write_layout(tmp_path / "a", "mp4_vocab", tensors)
    other = write_layout(tmp_path / "b", "mp2", tensors)
    layout = store.read_layout(same)
    assert compare_with_strategy(layout, same / "strategy.ckpt", rank=3) == []
    diff = compare_with_strategy(layout, other / "strategy.ckpt", rank=3)
    assert "lm.backbone.blocks.0.attention.linear_q.weight: strategy [0:128, 64:128] vs ours [0:128, 96:128]" in diff


def test_one_file_steps_of_the_earlier_format_still_resume_and_load(tmp_path):
    import mindspore as ms

    from pangu_ms.checkpoint.inference import load_for_inference
    from pangu_ms.checkpoint.training import Checkpointer

    job, a = _trainer(5)
    step = store.checkpoints_root(tmp_path / "old") / "step_00000002"
    step.mkdir(parents=True)
    ms.save_checkpoint(a.cell, str(step / "model.ckpt"), append_dict={"step": 2, "data_step": 2, "tokens_seen": 64},
                       crc_check=True)
    (step / "meta.json").write_text(json.dumps({"step": 2, "data_step": 2, "tokens_seen": 64}))
    (step / "config.yaml").write_text(job.to_yaml())
    _, b = _trainer(6)
    state = Checkpointer(tmp_path / "new", b.cell, job).resume(tmp_path / "old")
    assert state.step == 2
    want = _values(a.cell)
    for n, v in _values(b.cell).items():
        np.testing.assert_array_equal(v, want[n], err_msg=n)
    with pytest.raises(CheckpointError, match="no tokenizer copy"):  # the weights load; this step has no tokenizer
        load_for_inference(tmp_path / "old")
    from pangu_ms.checkpoint.inference import model_weights

    weights = model_weights(step)
    np.testing.assert_array_equal(weights["lm.backbone.final_ln.gamma"], want["lm.backbone.final_ln.gamma"])
