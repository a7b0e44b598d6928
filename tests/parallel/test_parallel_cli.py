"""`python -m pangu_ms plan`: text and JSON, --devices, --rank, --set, and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pangu_ms.cli import main

ROOT = Path(__file__).resolve().parents[2]
CFG_200B = str(ROOT / "ascend_configs/runs/pangu_alpha_200b_2048p.yaml")
CFG_8P = str(ROOT / "ascend_configs/runs/pangu_alpha_2.6b_8p_910b.yaml")




def run_json(capsys, *args) -> dict:
    assert main(["plan", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_200b_json_has_the_contract_fields(capsys):
    r = run_json(capsys, "--config", CFG_200B, "--rank", "1000")
    assert r["params"] == 206_861_008_896 and r["devices"] == 2048
    assert r["mesh"] == {"dp": 16, "mp": 8, "pp": 16}
    assert r["stage_of_layer"] == [i // 4 for i in range(64)]
    assert r["coords"] == {"stage": 7, "dp": 13, "mp": 0}  # 1000 = 7*128 + 13*8 + 0
    assert r["groups"]["mp"] == list(range(1000, 1008))
    assert r["strategies"]["lm.backbone.blocks.*.ffn.linear_fc1.matmul"] == [[16, 1], [1, 8]]
    pd = r["per_device_bytes"]
    # stage 7 holds blocks 28-31: 4 layers of (4H^2 + 2HF)/8 weights (+ biases and LayerNorms)
    h, f = 16384, 65536
    per_layer = (4 * h * h + 2 * h * f) // 8 + (3 * h + f) // 8 + h + h + 4 * h
    assert pd["gradients"] == 4 * 4 * per_layer
    assert pd["weights"] < pd["gradients"] / 8  # optimizer sharding splits the fp32 weights over dp=16
    st = r["per_stage_bytes"][7]
    assert st["optimizer"] == 2 * st["gradients"] and st["optimizer_sharded"] == pytest.approx(
        st["optimizer"] / 16, rel=0.01)


def test_devices_rescales_data_parallel_and_set_overrides(capsys):
    r = run_json(capsys, "--config", CFG_8P, "--devices", "16", "--set", "parallel.optimizer_shard=false",
                 "--set", "train.global_batch_size=64")
    assert r["mesh"] == {"dp": 4, "mp": 4, "pp": 1} and r["devices"] == 16
    assert r["per_device_bytes"]["weights"] == r["per_device_bytes"]["gradients"]  # no sharding


def test_text_output_names_stages_strategies_and_memory(capsys):
    assert main(["plan", "--config", CFG_8P, "--rank", "5"]) == 0
    out = capsys.readouterr().out
    assert "8 devices = pp 1 x dp 2 x mp 4" in out
    assert "rank 5  stage 0, dp 1, mp 1" in out
    assert "lm.backbone.blocks.*.attention.linear_out.matmul" in out and "((2, 4), (4, 1))" in out
    assert "(2560, 10240) -> (2560, 2560)" in out  # fc1 weight split over mp=4
    assert "memory per device" in out and "sharded over dp" in out


@pytest.mark.parametrize("args,needle", [
    (["--set", "parallel.mp=3"], "model.num_heads=32 is not divisible by parallel.mp=3"),
    (["--devices", "6"], "--devices 6 is not divisible by parallel.mp*pp = 4*1 = 4"),
    (["--rank", "8"], "--rank 8 is outside 0..7"),
])
def test_errors_are_one_line_exit_2(capsys, args, needle):
    assert main(["plan", "--config", CFG_8P, *args]) == 2
    assert needle in capsys.readouterr().err
