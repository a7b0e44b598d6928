"""`python -m pangu_ms plan`: text and JSON, --devices, --rank, --set, --device, --search,
--dry-run-commands, and clear errors."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from pangu_ms.cli import main

ROOT = Path(__file__).resolve().parents[2]
CFG_200B = str(ROOT / "ascend_configs/runs/pangu_alpha_200b_2048p.yaml")
CFG_8P = str(ROOT / "ascend_configs/runs/pangu_alpha_2.6b_8p_910b.yaml")


def run_json(capsys, *args):
    assert main(["plan", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_200b_json_has_the_contract_fields(capsys):
    r = run_json(capsys, "--config", CFG_200B, "--rank", "1000")
    assert r["params"] == 206_861_008_896 and r["devices"] == 2048 and r["device"] == "910A"
    assert r["mesh"] == {"dp": 16, "mp": 8, "pp": 16}
    assert r["stage_of_layer"] == [i // 4 for i in range(64)]
    assert r["coords"] == {"stage": 7, "dp": 13, "mp": 0}  # 1000 = 7*128 + 13*8 + 0
    assert r["groups"]["mp"] == list(range(1000, 1008))
    assert r["strategies"]["lm.backbone.blocks.*.ffn.linear_fc1.matmul"] == [[16, 1], [1, 8]]
    pd = r["per_device_bytes"]  # rank 1000's stage
    assert pd["stage"] == 7
    # stage 7 holds blocks 28-31: 4 layers of (4H^2 + 2HF)/8 weights (+ biases and LayerNorms)
    h, f = 16384, 65536
    per_layer = (4 * h * h + 2 * h * f) // 8 + (3 * h + f) // 8 + h + h + 4 * h
    assert pd["gradients"] == 4 * 4 * per_layer
    assert pd["optimizer"] == 2 * pd["weights"]
    assert pd["weights"] == pytest.approx(pd["gradients"] / 16, rel=0.01)  # sharded over dp=16 (LN over 128)
    assert [s["stage"] for s in r["memory"]["per_stage"]] == list(range(16))
    t = r["time"]
    assert t["step_time_s"] == pytest.approx(sum(t["parts_s"].values()))
    assert 0 < t["mfu"] < 1 and t["binds"] in t["parts_s"]
    assert {c["name"] for c in r["device_constants"]} >= {"peak_tflops", "usable_gb", "hccs_link_gbs", "roce_gbs"}


def test_devices_rescales_data_parallel_and_set_overrides(capsys):
    r = run_json(capsys, "--config", CFG_8P, "--device", "910B", "--devices", "16", "--set",
                 "parallel.optimizer_shard=false", "--set", "train.global_batch_size=64")
    assert r["mesh"] == {"dp": 4, "mp": 4, "pp": 1} and r["devices"] == 16
    assert r["per_device_bytes"]["weights"] == r["per_device_bytes"]["gradients"]  # no sharding
    assert r["memory"]["per_stage"][0]["pool_budget"] == 58 * 2**30


def test_text_output_names_stages_strategies_memory_and_time(capsys):
    assert main(["plan", "--config", CFG_8P, "--device", "910B", "--rank", "5"]) == 0
    out = capsys.readouterr().out
    assert "8 devices = pp 1 x dp 2 x mp 4" in out
    assert "rank 5  stage 0, dp 1, mp 1" in out
    assert "lm.backbone.blocks.*.attention.linear_out.matmul" in out and "((2, 4), (4, 1))" in out
    assert "(2560, 10240) -> (2560, 2560)" in out  # fc1 weight split over mp=4
    assert "memory per device on 910B" in out and "step time (predicted)" in out and "tokens/s per device" in out
    assert "peak_tflops" in out and "[third_party_910b]" in out


def test_search_prints_the_ranking_and_why(capsys):
    assert main(["plan", "--config", CFG_8P, "--search", "--devices", "8", "--device", "910B", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "search: 8 x 910B, global batch 32:" in out and "why the first wins:" in out and "fastest:" in out
    r = run_json(capsys, "--config", CFG_8P, "--search", "--devices", "8", "--device", "910B", "--top", "3")
    assert len(r["top"]) == 3 and r["fit"] + sum(r["dropped"].values()) == r["tried"]


def test_dry_run_commands_one_rank_per_stage(capsys):
    cmds = run_json(capsys, "--config", CFG_200B, "--dry-run-commands", "--set", "train.steps=5")
    assert [c["rank"] for c in cmds] == [s * 128 for s in range(16)]  # the first rank of every stage
    argv = shlex.split(cmds[3]["command"])
    assert argv[:7] == ["GLOG_v=1", "msrun", "--worker_num=2048", "--local_worker_num=1", "--sim_level=1",
                        "--sim_rank_id=384", "--log_dir=runs/dryrun/rank_384"]
    assert argv[8:14] == ["python", "-m", "pangu_ms", "pretrain", "--config", CFG_200B]
    assert argv[14:] == ["--set", "train.steps=5", "--set", "run.device=Ascend", "--set", "train.steps=1",
                         "--set", "run.output_dir=runs/dryrun/rank_384/run"]
    assert "Used peak memory usage (without fragments)" in cmds[3]["grep"]
    assert 0 < cmds[3]["planner_used_gb"] < cmds[3]["planner_with_fragments_gb"]


@pytest.mark.parametrize("args,needle", [
    (["--set", "parallel.mp=3"], "model.num_heads=32 is not divisible by parallel.mp=3"),
    (["--devices", "6"], "--devices 6 is not divisible by parallel.mp*pp = 4*1 = 4"),
    (["--rank", "8"], "--rank 8 is outside 0..7"),
    (["--device", "910C"], "unknown device '910C': use one of 910A, 910B, 910B-32GB"),
    (["--search"], "--search needs --devices N"),
])
def test_errors_are_one_line_exit_2(capsys, args, needle):
    assert main(["plan", "--config", CFG_8P, *args]) == 2
    assert needle in capsys.readouterr().err
