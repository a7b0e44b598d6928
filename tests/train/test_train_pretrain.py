"""`python -m pangu_ms pretrain` end to end on toy shards: outputs, corrupt or incomplete
checkpoint detection and fallback, loading for inference. (Kills at random moments and exact
resume: tests/fault.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from pangu_ms.errors import CheckpointError
from pangu_ms.train import checkpoint as ckpt
from pangu_ms.train.metrics import read_metrics
from toy_data import TOY_MODEL, write_prepared, write_run_config

pytestmark = pytest.mark.e2e
STEPS = 6


def pretrain(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pangu_ms", "pretrain", "--config", str(config), "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def final_tensors(run_dir: Path) -> dict[str, np.ndarray]:
    step_dir = ckpt.list_step_dirs(run_dir)[0]
    assert step_dir.name == f"step_{STEPS:08d}"
    return {k: v.asnumpy() for k, v in ckpt.read_tensors(step_dir).items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.tokenizer import segment, train_tokenizer

    root = tmp_path_factory.mktemp("pretrain")
    data = write_prepared(root / "data", seq_length=TOY_MODEL["seq_length"], vocab_size=TOY_MODEL["vocab_size"])
    text = ["今天天气很好，我们去公园散步。", "人民日报发表评论文章，讨论经济发展。", "中国的科学技术不断进步，人民生活水平提高。"]
    train_tokenizer(TokenizerConfig(vocab_size=56, byte_fallback=False, character_coverage=1.0), root / "tok",
                    segmented=[segment(t) for t in text * 30])
    config = write_run_config(root / "run.yaml", data, root / "run_a", tokenizer={"path": str(root / "tok")})
    done = pretrain(config)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, config, done


def test_pretrain_writes_metrics_plot_summary_and_checkpoints(setup):
    root, _, done = setup
    run = root / "run_a"
    assert "held-out loss" in done.stdout and "tokens seen" in done.stdout
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert {"loss", "lr", "loss_scale", "grad_norm", "tokens_per_s", "tokens_seen"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tokens_seen"] == STEPS * 4 * TOY_MODEL["seq_length"]
    assert summary["heldout_ppl"] == pytest.approx(np.exp(summary["heldout_loss"]))
    assert summary["unigram_entropy"] > 0
    # keep_last=2 of the checkpoints at steps 2, 4, 6; no temporary directories left behind
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    step6 = run / "checkpoints" / "step_00000006"
    assert {p.name for p in step6.iterdir()} == {"rank_0", "meta.json", "config.yaml", "tokenizer", "layout.json",
                                                 "strategy.ckpt", "manifest.json"}
    assert {p.name for p in (step6 / "rank_0").iterdir()} == {"model.safetensors", "rank.json"}
    manifest = json.loads((step6 / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and "rank_0/model.safetensors" in manifest["files"]
    weights = step6 / "rank_0" / "model.safetensors"
    assert manifest["files"]["rank_0/model.safetensors"]["bytes"] == weights.stat().st_size
    meta = json.loads((step6 / "meta.json").read_text())
    assert meta["step"] == STEPS and meta["data_step"] == STEPS and meta["loss_scale"] > 0
    assert (meta["micro_batch"], meta["data_shards"], meta["accum_steps"]) == (4, 1, 1)
    tensors = ckpt.read_tensors(step6)
    assert {"loss_scale", "global_step", "step", "data_step"} <= set(tensors)
    assert any(k.startswith("adam_m.lm.") for k in tensors)


def test_corrupt_checkpoint_is_detected_and_resume_falls_back(setup):
    root, config, _ = setup
    run_c = root / "run_c"
    shutil.copytree(root / "run_a" / "checkpoints", run_c / "checkpoints")
    newest = run_c / "checkpoints" / "step_00000006" / "rank_0" / "model.safetensors"
    blob = bytearray(newest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte: only the checksum notices
    newest.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256 differs from the manifest"):
        ckpt.read_tensors(newest.parent.parent)
    older = run_c / "checkpoints" / "step_00000004"
    truncated = run_c / "truncated" / "checkpoints" / "step_00000004"
    shutil.copytree(older, truncated)
    weights = truncated / "rank_0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.read_tensors(truncated)
    resumed = pretrain(config, "--resume", str(run_c))  # skips step 6, continues from step 4
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping checkpoint" in resumed.stderr and "step_00000006" in resumed.stderr
    assert "the newest step complete on every rank" in resumed.stderr
    a, c = final_tensors(root / "run_a"), final_tensors(run_c)
    assert a.keys() == c.keys()
    for k in a:  # resumed from step 4: bitwise the uninterrupted run's tensors
        np.testing.assert_array_equal(c[k], a[k], err_msg=k)


def test_resume_without_checkpoints_is_a_clear_error(setup, tmp_path):
    _, config, _ = setup
    done = pretrain(config, "--resume", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "no checkpoints" in done.stderr


def test_load_for_inference(setup):
    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    root, _, _ = setup
    job, model, tok = ckpt.load_for_inference(root / "run_a")
    assert isinstance(model, PanguAlphaLM) and job.model.hidden_size == TOY_MODEL["hidden_size"]
    saved = final_tensors(root / "run_a")
    for name, p in model.parameters_and_names():
        np.testing.assert_array_equal(p.asnumpy(), saved["lm." + name])
    assert tok.decode(tok.encode("今天天气很好")) == "今天天气很好"
    seq = TOY_MODEL["seq_length"]
    ids = ms.Tensor(np.full((1, seq), 20, np.int32))
    pos = ms.Tensor(np.arange(seq, dtype=np.int32)[None])
    doc = ms.Tensor(np.zeros((1, seq), np.int32))
    assert model(ids, pos, doc).shape == (seq, TOY_MODEL["vocab_size"])


def test_resume_with_another_data_layout_is_refused(setup, tmp_path):
    root, config, _ = setup
    done = pretrain(config, "--resume", str(root / "run_a"), "--out", str(tmp_path / "x"),
                    "--set", "train.global_batch_size=8")
    assert done.returncode == 2 and "data layout" in done.stderr
