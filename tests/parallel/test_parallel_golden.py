"""Golden plans: for every shipped layout, the resolved {op path: strategy} table, pipeline
stages, shared parameters, recompute cells and gradient fusion groups read back from the
built model (no compiling) equal the committed JSON. A change in sharding is a visible diff.

Regenerate after an intended change, then review the diff:
    PANGU_UPDATE_GOLDEN=1 python -m pytest -q tests/parallel/test_parallel_golden.py
A run that rewrites a file fails (re-run without the variable to compare), and under CI
(`CI` set, as `.ci/run` does) the variable is refused: the golden test must compare.

Independently of the files, every shipped layout is checked by hand against the paper's
rules for the primitives that carry the layout (projections, bias adds, the attention
batch-matmuls and softmax, embedding gathers, the vocabulary projection, the loss).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mindspore import nn
from pangu_testing import golden_dumps as dumps
from pangu_testing import updating_golden as updating

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


@pytest.mark.parametrize("name", LAYOUTS)
def test_golden_plan(name):
    got = json.loads(json.dumps(resolved_plan(name)))
    path = GOLDEN / f"{name}.json"
    if updating() and (not path.is_file() or path.read_text(encoding="utf-8") != dumps(got)):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(dumps(got), encoding="utf-8")
        pytest.fail(f"rewrote {path.name}: review `git diff {path}`, then run without PANGU_UPDATE_GOLDEN")
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


# the paper's layouts, typed from docs/parallel_and_launch.md, not read from the configs:
# (devices, dp, mp, pp, word table split over the vocabulary)
PAPER = {"pangu_alpha_2.6b_512p": (512, 64, 8, 1, False), "pangu_alpha_13b_1024p": (1024, 128, 8, 1, True),
         "pangu_alpha_200b_2048p": (2048, 16, 8, 16, True), "pangu_alpha_2.6b_8p_910b": (8, 2, 4, 1, True),
         "pangu_alpha_13b_16p": (16, 2, 8, 1, True)}


def expected_strategies(dp: int, mp: int, vocab_split: bool, kernels: str) -> dict[str, list]:
    """The paper's rules (Zeng et al. 2021; DESIGN "Parallelism") for every layer, blocks and
    the query layer alike: column-parallel Q/K/V and FFN fc1 (weights split on the output dim,
    bias and output split over mp), row-parallel attention output and fc2 (split on the input
    dim; bias and output whole), batch-matmuls and softmax over (batch, heads); the word table
    vocab-split or replicated, the position tables replicated with ids over dp; logits
    vocab-parallel with the table. The reference kernels (910A, and the CPU) show the attention
    core's primitives; on 910B the fused FlashAttentionScore takes q, k, v in the same layout."""
    col = {"matmul": [[dp, 1], [1, mp]], "bias_add": [[dp, mp], [mp]]}
    row = {"matmul": [[dp, mp], [mp, 1]], "bias_add": [[dp, 1], [1]]}
    bnsd = [dp, mp, 1, 1]
    out = {}
    for layer in ("lm.backbone.blocks.*", "lm.backbone.query_layer"):
        for cell, rule in (("attention.linear_q", col), ("attention.linear_k", col), ("attention.linear_v", col),
                           ("attention.linear_out", row), ("ffn.linear_fc1", col), ("ffn.linear_fc2", row)):
            # fc1's bias is added by the bias + activation role that follows its matmul
            where = {"bias_add": f"{cell}.activation"} if cell == "ffn.linear_fc1" else {}
            out.update({f"{layer}.{where.get(op, cell)}.{op}": s for op, s in rule.items()})
        if kernels == "ascend_910b":
            continue  # FlashAttentionScore: checked below, by its q, k, v inputs
        out.update({f"{layer}.attention.core.qk_matmul": [bnsd, bnsd], f"{layer}.attention.core.pv_matmul": [bnsd, bnsd],
                    f"{layer}.attention.core.softmax": [bnsd]})
    out["lm.backbone.word_embedding.gather"] = [[mp, 1], [1, 1]] if vocab_split else [[1, 1], [dp, 1]]
    out["lm.backbone.position_embedding.gather"] = [[1, 1], [dp, 1]]
    out["lm.backbone.top_query_embedding.gather"] = [[1, 1], [dp, 1]]
    out["lm.vocab_proj"] = [[dp, 1], [mp if vocab_split else 1, 1]]
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_golden_plans_follow_the_paper_layout(name):
    devices, dp, mp, pp, vocab_split = PAPER[name]
    g = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    assert (g["mesh"]["dp"], g["mesh"]["mp"], g["mesh"]["pp"]) == (dp, mp, pp) and dp * mp * pp == devices
    assert g["mesh"]["vocab_emb_dp"] is not vocab_split or pp > 1
    s = g["strategies"]
    for path, want in expected_strategies(dp, mp, vocab_split, g["kernels"]).items():
        assert s.get(path) == want, f"{name}: {path} is {s.get(path)}, the paper's layout gives {want}"
    if g["kernels"] == "ascend_910b":
        for layer in ("lm.backbone.blocks.*", "lm.backbone.query_layer"):
            assert s[f"{layer}.attention.core.flash_attention"][:3] == [[dp, mp, 1, 1]] * 3, layer
    # the loss: plain cross-entropy over whole logits, or vocab-parallel with the split table;
    # every loss primitive over logits [T, V] splits T over dp (and V over mp when vocab-parallel)
    assert g["loss_cell"] == ("VocabParallelCrossEntropy" if vocab_split and mp > 1 else "TiedHeadCrossEntropy")
    loss = {k: v for k, v in s.items() if k.startswith("loss.") and v}
    assert loss and all(v[0][0] == dp for v in loss.values()), loss
    two_d = [v[0] for v in loss.values() if len(v[0]) == 2]
    assert ([dp, mp] in two_d) == (vocab_split and mp > 1), loss
    assert not g["stages"] if pp == 1 else max(g["stages"].values()) == pp - 1


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
