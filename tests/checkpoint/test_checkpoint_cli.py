"""`python -m pangu_ms checkpoint merge|reshard|inspect` on a sliced checkpoint: the commands a user
runs to move an 8-device checkpoint to 4 devices or to one CPU process."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ckpt_fixtures import CKPT_MODEL, trained_tensors, write_layout
from pangu_ms.checkpoint import store
from pangu_ms.checkpoint.safetensors_io import Reader
from pangu_ms.cli import main


@pytest.fixture(scope="module")
def tensors():
    return trained_tensors()


@pytest.fixture(scope="module")
def eight(tmp_path_factory, tensors):
    return write_layout(tmp_path_factory.mktemp("eight"), "pp2_dp2_mp2_opt", tensors)


def test_inspect_shows_layout_completeness_and_sizes(eight, capsys):
    assert main(["checkpoint", "inspect", str(eight.parent.parent), "--json", "--verify"]) == 0
    r = json.loads(capsys.readouterr().out)
    (step,) = r["steps"]
    assert r["newest_complete"] == 2 and step["complete"] and step["world_size"] == 8
    assert step["mesh"] == {"dp": 2, "mp": 2, "pp": 2, "optimizer_shard": True} and len(step["rank_bytes"]) == 8
    assert main(["checkpoint", "inspect", str(eight)]) == 0
    text = capsys.readouterr().out
    assert "dp 2 x mp 2 x pp 2, optimizer shard = 8 ranks" in text and "complete" in text


def test_merge_then_reshard_to_another_run_config(eight, tensors, tmp_path, capsys):
    assert main(["checkpoint", "merge", "--ckpt", str(eight.parent.parent), "--out", str(tmp_path / "one")]) == 0
    merged = store.list_step_dirs(tmp_path / "one")[0]
    r = Reader(merged / "rank_0" / "model.safetensors")
    for n, a in tensors.items():
        np.testing.assert_array_equal(r.read(n), a, err_msg=n)
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {**CKPT_MODEL, "dropout": 0.0}, "parallel": {"mp": 4, "dp": 1},
                                   "train": {"global_batch_size": 4}}), encoding="utf-8")
    assert main(["checkpoint", "reshard", "--ckpt", str(merged), "--to-config", str(run), "--set",
                 "parallel.vocab_emb_dp=false", "--out", str(tmp_path / "four")]) == 0
    four = store.list_step_dirs(tmp_path / "four")[0]
    lay = store.read_layout(four)
    assert (lay.dp, lay.mp, lay.pp) == (1, 4, 1)
    table = "lm.backbone.word_embedding.embedding_table"
    np.testing.assert_array_equal(Reader(four / "rank_2" / "model.safetensors").read(table), tensors[table][256:384])
    capsys.readouterr()


def test_reshard_refuses_a_config_for_another_model(eight, tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {**CKPT_MODEL, "dropout": 0.0, "hidden_size": 64}}), encoding="utf-8")
    assert main(["checkpoint", "reshard", "--ckpt", str(eight), "--to-config", str(run), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has shape" in err and "another model" in err
