"""Cluster and launcher test fixtures (loaded by tests/conftest.py as a plugin): a toy run config, small prepared data and rank tables built from fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pangu_ms.cli import main

FIX = Path(__file__).parent / "cluster" / "fixtures"
TOY_MODEL = dict(vocab_size=96, seq_length=16, num_layers=3, hidden_size=32, ffn_hidden_size=64, num_heads=4,
                 dropout=0.0)


def write_config(path: Path, data_dir: Path, out_dir: Path, *, dp: int = 1, batch: int = 16, steps: int = 2) -> Path:
    """A run YAML for a toy model (train section small enough for a CPU run)."""
    cfg = {"model": TOY_MODEL, "tokenizer": {"path": str(path.parent / "no_tokenizer")},
           "data": {"output_dir": str(data_dir)}, "parallel": {"dp": dp},
           "schedule": {"warmup_steps": 1},
           "checkpoint": {"every_steps": steps, "keep_last": 1},
           "train": {"steps": steps, "global_batch_size": batch, "eval_every": 0, "log_every": 1},
           "run": {"output_dir": str(out_dir), "seed": 3}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def fake_prepared(out: Path) -> Path:
    """Small real shards and manifest for the toy model (what the pre-flight data check reads)."""
    from toy_data import write_prepared

    return write_prepared(out, seq_length=TOY_MODEL["seq_length"], vocab_size=TOY_MODEL["vocab_size"],
                          train_rows=32, heldout_rows=8)


@pytest.fixture()
def two_server_table(tmp_path) -> Path:
    """Two 8-device servers (10.0.0.1, 10.0.0.2) merged: 16 ranks."""
    for name, conf, sid in (("s0.json", "hccn_8dev.conf", "10.0.0.1"), ("s1.json", "hccn_server1.conf", "10.0.0.2")):
        assert main(["rank-table", "build", "--hccn-conf", str(FIX / conf), "--server-id", sid,
                     "--out", str(tmp_path / name)]) == 0
    out = tmp_path / "rank_table.json"
    assert main(["rank-table", "merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out", str(out)]) == 0
    return out


@pytest.fixture()
def job_files(tmp_path) -> dict[str, Path]:
    data = fake_prepared(tmp_path / "data")
    return {"data": data, "out": tmp_path / "run_out", "dir": tmp_path}


@pytest.fixture()
def make_config(job_files):
    """`make_config(name, dp=..., batch=..., steps=...)` -> a toy run YAML using the fake data."""
    def make(name: str = "run.yaml", **kw) -> Path:
        return write_config(job_files["dir"] / name, job_files["data"], job_files["out"], **kw)
    return make
