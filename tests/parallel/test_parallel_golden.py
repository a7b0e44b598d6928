"""Golden plans: for every shipped layout, the resolved {op path: strategy} table, pipeline
stages, shared parameters, recompute cells and gradient fusion groups read back from the
built model (no compiling) equal the committed JSON. A change in sharding is a visible diff.

Regenerate after an intended change, then review the diff:
    PANGU_UPDATE_GOLDEN=1 python -m pytest -q tests/parallel/test_parallel_golden.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mindspore import nn

from pangu_ms.config import load_config
from pangu_ms.kernels.switch import job_kernel_spec
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
from pangu_ms.parallel import parallelize, plan_for
from pangu_ms.parallel.readback import read_back

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden")
LAYOUTS = ["pangu_alpha_2.6b_512p", "pangu_alpha_13b_1024p", "pangu_alpha_200b_2048p",
           "pangu_alpha_2.6b_8p_910b", "pangu_alpha_13b_16p"]


def resolved_plan(name: str) -> dict:
    job = load_config(ROOT / "ascend_configs" / "runs" / f"{name}.yaml")
    spec = job_kernel_spec(job)  # the job's device and chip: Ascend 910A or 910B, built on CPU
    with nn.utils.no_init_parameters():  # paper sizes: shapes only, no weight memory
        net = PanguAlphaWithLoss(job.model, spec)
    parallelize(net, plan_for(job.model, job.parallel, job.recompute, kernels=spec), job.parallel)
    p = job.parallel
    return {"config": f"ascend_configs/runs/{name}.yaml", "kernels": spec.name,
            "mesh": {"dp": p.dp, "mp": p.mp, "pp": p.pp, "micro_batches": p.micro_batches,
                     "vocab_emb_dp": p.vocab_emb_dp, "optimizer_shard": p.optimizer_shard},
            "recompute_mode": job.recompute.mode, **read_back(net)}


def dumps(obj: dict) -> str:
    """JSON with one table entry per line (reviewable diffs)."""
    lines, items = ["{"], list(obj.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, dict) and value:
            rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines += [f" {json.dumps(key)}: {{", ",\n".join(rows), f" }}{comma}"]
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


@pytest.mark.parametrize("name", LAYOUTS)
def test_golden_plan(name):
    got = json.loads(json.dumps(resolved_plan(name)))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("PANGU_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(dumps(got), encoding="utf-8")
    want = json.loads(path.read_text(encoding="utf-8"))
    for key in want:
        assert got[key] == want[key], f"{name}: '{key}' differs from {path.name} (regenerate and review if intended)"
    assert set(got) == set(want)


def test_golden_200b_matches_the_paper_layout():
    g = json.loads((GOLDEN / "pangu_alpha_200b_2048p.json").read_text(encoding="utf-8"))
    s = g["strategies"]
    assert g["mesh"]["dp"] * g["mesh"]["mp"] * g["mesh"]["pp"] == 2048
    assert s["lm.backbone.blocks.*.attention.linear_q.matmul"] == [[16, 1], [1, 8]]
    assert s["lm.backbone.blocks.*.attention.linear_out.matmul"] == [[16, 8], [8, 1]]
    assert s["lm.vocab_proj"] == [[16, 1], [8, 1]] and g["loss_cell"] == "VocabParallelCrossEntropy"
    assert s["loss.head.vocab_proj"] == [[16, 1], [8, 1]] and s["loss.max"] == [[16, 8]]
    assert s["lm.backbone.blocks.*.attention.core.qk_matmul"] == [[16, 8, 1, 1], [16, 8, 1, 1]]
    assert s["lm.backbone.blocks.*.ffn.linear_fc1.matmul"] == [[16, 1], [1, 8]]
    assert s["lm.backbone.blocks.*.ffn.linear_fc1.activation.bias_add"] == [[16, 8], [8]]
    assert s["lm.backbone.blocks.*.ln1.layer_norm"] == [[16, 1], [1], [1]] and g["kernels"] == "reference"
    assert g["stages"]["lm.backbone.blocks.0"] == 0 and g["stages"]["lm.backbone.blocks.62"] == 15
    assert g["stages"]["lm.backbone.query_layer"] == 15 and g["stages"]["lm.backbone.word_embedding"] == 0
    assert g["shared_parameters"] == {"lm.backbone.word_embedding.embedding_table": [0, 15]}
    assert g["recompute"] == ["lm.backbone.blocks.*", "lm.backbone.query_layer"]


def test_golden_910b_holds_the_fused_operators():
    """The 910B layout's model holds FlashAttentionScore and AddLayerNorm, split over (dp, mp) and dp."""
    g = json.loads((GOLDEN / "pangu_alpha_2.6b_8p_910b.json").read_text(encoding="utf-8"))
    s = g["strategies"]
    assert g["kernels"] == "ascend_910b" and (g["mesh"]["dp"], g["mesh"]["mp"]) == (2, 4)
    bnsd, mask = [2, 4, 1, 1], [2, 1, 1, 1]  # q, k, v, drop bits (dropout 0.1) and the uint8 mask
    assert s["lm.backbone.blocks.*.attention.core.flash_attention"] == [bnsd, bnsd, bnsd, bnsd, mask]
    assert s["lm.backbone.blocks.*.ln2.add_layer_norm"] == [[2, 1], [2, 1], [1], [1]]
    assert s["lm.backbone.attention_mask.blocked"] == [mask]
    assert not any(k.endswith(("core.softmax", "core.qk_matmul", "ln2.layer_norm")) for k in s)
