"""The README main job, shortened: prepare the real People's Daily corpus with the quickstart
config, pretrain a few steps, then generate from the checkpoint through the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, GLOG_v="3")
    return subprocess.run([sys.executable, "-m", "pangu_ms", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_readme_quickstart_prepare_pretrain_generate(repo_root, tmp_path):
    config = str(repo_root / "ascend_configs" / "runs" / "pangu_alpha_tiny_cpu.yaml")
    sets = ["--set", f"tokenizer.path={tmp_path / 'tokenizer'}",
            "--set", f"data.output_dir={tmp_path / 'data'}",
            "--set", f"run.output_dir={tmp_path / 'run'}"]
    prep = cli("prepare", "--config", config, "--no-progress", "--json", *sets, cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert (tmp_path / "tokenizer" / "vocab.model").is_file()
    assert (tmp_path / "data" / "manifest.json").is_file()

    train = cli("pretrain", "--config", config, "--no-progress", *sets,
                "--set", "train.steps=12", "--set", "train.eval_every=12", "--set", "train.eval_batches=2",
                "--set", "checkpoint.every_steps=6", "--set", "schedule.warmup_steps=4", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 12
    # a dozen steps already take the loss well below the uniform-guess loss ln(8000) = 8.99
    assert summary["heldout_loss"] < 8.0
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 0

    gen = cli("generate", "--ckpt", str(tmp_path / "run"), "--prompt", "中国经济", "--max-new-tokens", "8",
              "--json", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    out = json.loads(gen.stdout.strip().splitlines()[-1])
    assert out["prompt"] == "中国经济"
    assert out["new_tokens"] == 8 or out["finish_reason"] == "stop"
    assert out["completion"]
