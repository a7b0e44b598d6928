"""PanGu-Sigma's parallel plan: ep carved out of dp, checked by validate(); the paper's 512-device
layout (mp 8, ep 64, dp 64) read back from the built model against a golden file; the memory
report with and without host-side expert state against hand-counted numbers.

Regenerate the golden file after an intended change, then review the diff:
    PANGU_UPDATE_GOLDEN=1 python -m pytest -q tests/sigma/test_sigma_parallel.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pangu_testing import golden_dumps, updating_golden

from pangu_ms.config import DomainConfig, ExpertsConfig, ModelConfig, ParallelConfig, load_config
from pangu_ms.errors import ConfigError
from pangu_ms.parallel.experts import sigma_plan_report
from pangu_ms.parallel.validate import validate

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "parallel" / "golden" / "pangu_sigma_1085b_512p.json"
H, F = 5120, 20480


@pytest.fixture(scope="module")
def report():
    job = load_config(ROOT / "ascend_configs" / "runs" / "pangu_sigma_1085b_512p.yaml")
    return sigma_plan_report(job)


def _golden_view(r: dict) -> dict:
    mem = r["memory"]
    return {"config": "ascend_configs/runs/pangu_sigma_1085b_512p.yaml", "kernels": r["kernels"], "mesh": r["mesh"],
            "experts": r["experts"],
            "params": r["params"], "loss_cell": r["loss_cell"], "all_to_all": r["all_to_all"],
            "per_device_elements": r["per_device_elements"],
            "memory_bytes": {"expert_state_on_device": mem["expert_state_on_device"]["pool_total"],
                             "expert_state_on_host": mem["expert_state_on_host"]["pool_total"]},
            "strategies": r["strategies"],
            "expert_parameters": {p["name"]: p["split"] for p in r["parameters"] if ".ffn.expert_" in p["name"]}}


def test_golden_512p_plan(report):
    got = json.loads(json.dumps(_golden_view(report)))
    if updating_golden():
        GOLDEN.write_text(golden_dumps(got), encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for key in want:
        assert got[key] == want[key], f"'{key}' differs from {GOLDEN.name} (regenerate and review if intended)"
    assert set(got) == set(want)


def test_512p_layout_is_the_papers(report):
    s = report["strategies"]
    assert report["mesh"] == {"dp": 64, "mp": 8, "ep": 64, "edp": 1, "pp": 1} and report["devices"] == 512
    # the read-back collapses an op to `blocks.*` when every block that has it agrees: the RRE
    # ops exist in blocks 32-38 only, the dense FFN's in blocks 0-31 only
    rre = "lm.backbone.blocks.*.ffn"
    assert s[f"{rre}.fc1"] == [[64, 1, 1], [64, 1, 8]] and s[f"{rre}.fc2"] == [[64, 1, 8], [64, 8, 1]]
    assert s[f"{rre}.dispatch"] == [[64, 1], [64]] and s[f"{rre}.combine"] == [[1, 1], [64]]
    assert s["lm.backbone.query_layer.ffn.fc1"] == [[64, 1, 1], [64, 1, 8]]
    assert s["lm.backbone.blocks.*.ffn.linear_fc1.matmul"] == [[64, 1], [1, 8]]  # the dense layers'
    sparse = {k.split(".")[-3] for k in report["all_to_all"]}
    assert sparse == {"32", "33", "34", "35", "36", "37", "38", "query_layer"}
    assert len(report["all_to_all"]) == 16  # dispatch and combine in each of the 8 sparse layers
    assert report["experts"]["per_device"] == 10
    splits = {p["name"]: p["split"] for p in report["parameters"]}
    w = "lm.backbone.blocks.32.ffn"
    assert splits[f"{w}.expert_w1"] == [64, 1, 8] and splits[f"{w}.expert_b2"] == [64, 1, 1]
    assert splits[f"{w}.route"] == [1, 1] and "lm.backbone.blocks.31.ffn.route" not in splits


def test_memory_report_counts_experts_by_hand(report):
    experts = report["per_device_elements"]["experts"]
    # 8 sparse layers x 10 experts per device x one FFN split over mp 8 (the b2 bias is not split)
    assert experts == 8 * 10 * (2 * H * F // 8 + F // 8 + H)
    t = report["memory_terms"]
    assert t["expert_weights"] == t["expert_gradients"] == 4 * experts and t["expert_optimizer"] == 8 * experts
    m = report["memory"]
    assert m["saved_by_host_state"] == 8 * experts
    assert m["expert_state_on_device"]["pool_total"] - m["expert_state_on_host"]["pool_total"] == 8 * experts


def _sigma(domains, **kw):
    return ExpertsConfig(domains=[DomainConfig(n, e) for n, e in domains], num_sparse_layers=2, **kw)


SMALL = ModelConfig(num_layers=4, hidden_size=64, ffn_hidden_size=128, num_heads=4, vocab_size=1000, seq_length=32)


@pytest.mark.parametrize("par,domains,needle", [
    (ParallelConfig(dp=6, ep=4), [("a", 8)], "parallel.ep=4 does not divide parallel.dp=6"),
    (ParallelConfig(dp=8, ep=8), [("a", 6)], "6 experts per sparse layer are not divisible by parallel.ep=8"),
    # 8 experts over 4 ranks: 2 a rank, so groups of 3 and 5 would share a rank
    (ParallelConfig(dp=8, ep=4), [("a", 3), ("b", 5)],
     "experts.domains a=3, b=5: with ep=4 each rank holds 2 experts, so a domain's group must be a multiple of 2"),
])
def test_validate_refuses_bad_expert_layouts(par, domains, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(SMALL, par, devices=par.devices, global_batch=8, experts=_sigma(domains))


def test_validate_accepts_groups_that_fill_whole_ranks():
    validate(SMALL, ParallelConfig(dp=8, ep=4), devices=8, global_batch=8, experts=_sigma([("a", 2), ("b", 6)]))


def test_dense_model_still_refuses_ep():
    with pytest.raises(ConfigError, match="expert parallelism is reserved for PanGu-Sigma"):
        validate(SMALL, ParallelConfig(dp=4, ep=2), devices=4, global_batch=8)
