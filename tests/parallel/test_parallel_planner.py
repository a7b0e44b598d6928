"""The planner's formulas on hand-computed cases, its weight table against built models, the
paper's 200B layout against the 910A budget, and the search's invariants."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pangu_testing import tiny_model_config
from pangu_ms.config import ModelConfig, ParallelConfig, load_config
from pangu_ms.errors import ConfigError
from pangu_ms.parallel import activations as act
from pangu_ms.parallel.hardware import DEVICES, GB, SOURCES, constant_table, device_spec
from pangu_ms.parallel.memory import Step, memory_report
from pangu_ms.parallel.plans import stage_of_layer
from pangu_ms.parallel.steptime import (allreduce_time, group_levels, layer_flops_per_token, mesh_allreduce,
                                        model_flops_per_step, ring_allreduce, step_time)
from pangu_ms.parallel.validate import validate

ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = ["pangu_alpha_2.6b_512p", "pangu_alpha_13b_1024p", "pangu_alpha_200b_2048p", "pangu_alpha_2.6b_8p_910b",
           "pangu_alpha_13b_16p"]


def small(**kw) -> ModelConfig:
    """s=4, h=2, f=8, a=1 (T H = 8 b, T F = 32 b, a s^2 b = 16 b)."""
    base = dict(vocab_size=16, seq_length=4, num_layers=2, hidden_size=2, ffn_hidden_size=8, num_heads=1,
                dropout=0.1, compute_dtype="float16")
    return ModelConfig(**{**base, **kw})


# ------------------------------------------------------------------ activations


def test_per_layer_terms_against_korthikanti():
    """910A (reference roles), fp16 + dropout, per block, by hand from the bprops:
    TH: LN1 input 4 + Q/K/V input 2 + LN2 input 4 + fc1 input 2 + two dropout bit masks 1/8 each;
    TH/t: q, k 4 + v 2 + output-projection input 2; TF/t: GeLU input 4 + output 4 + fc2 input 2;
    A/t: softmax output 4 + dropout bits 1/8 + cast probabilities 2. Korthikanti (t = 1, F = 4H):
    34 TH + 5 A. The query layer: 2 TH more (its cast query input)."""
    assert act.coefficients(small()) == {"TH": 12.25, "TH/t": 8, "TF/t": 10, "A/t": 6.125}
    assert act.coefficients(small(), query_layer=True)["TH"] == 14.25
    # 910B flash: q, k, v 6 + output 2 + output-projection input 2 TH/t; max and sum 2 x 8 x 4 bytes
    # per token and head; of the S x S terms only the dropout bits
    assert act.coefficients(small(), backend="ascend_910b") == {"TH": 12.25, "TH/t": 10, "TF/t": 10, "Ta/t": 64,
                                                               "A/t": 0.125}
    # fp32 without dropout: no casts, no masks; p v reads the softmax output, fc2 the GeLU output
    assert act.coefficients(small(dropout=0.0, compute_dtype="float32")) == {"TH": 16, "TH/t": 16, "TF/t": 8,
                                                                           "A/t": 4}
    # FastGeLU's backward reads only its input
    assert act.coefficients(small(activation="fast_gelu"))["TF/t"] == 6


def test_kernel_backend_follows_the_switch():
    assert act.kernel_backend(small(kernels="fused"), "910B") == "ascend_910b"
    assert act.kernel_backend(small(kernels="fused"), "910B-32GB") == "ascend_910b"
    assert act.kernel_backend(small(kernels="fused"), "910A") == "reference"
    assert act.kernel_backend(small(kernels="reference"), "910B") == "reference"


def test_layer_bytes_hand_worked():
    m = small()
    # 910A, b=1, t=1 (TH 8, TF 32, A 16): 12.25*8 + 8*8 + 10*32 + 6.125*16 = 98 + 64 + 320 + 98
    assert act.layer_bytes(m, 1, 1, "none") == 580
    assert act.layer_bytes(m, 1, 1, "selective") == 580 - 98  # the attention core's A terms go
    assert act.layer_bytes(m, 1, 1, "full") == 4 * 8  # only the fp32 layer input
    # b=2, t=2: 12.25*16 + 8*8 + 10*32 + 6.125*16
    assert act.layer_bytes(m, 2, 2, "none") == 196 + 64 + 320 + 98
    assert act.working_set(m, 1, 1, "full") == 580 + 2 * 8  # one layer rebuilt: the query layer's
    assert act.working_set(m, 1, 1, "none") == 0
    # 910B flash, b=1, t=1 (Ta 4): 98 + 10*8 + 320 + 64*4 + 16/8 = 756; selective drops the output
    # 2*8, the statistics 256 and the bits 2, leaving what the reference keeps outside its core
    assert act.layer_bytes(m, 1, 1, "none", backend="ascend_910b") == 756
    assert act.layer_bytes(m, 1, 1, "selective", backend="ascend_910b") == 756 - 16 - 256 - 2 == 482


def test_shared_mask_by_backend_and_recompute():
    m = small()  # b=1: b s^2 = 16
    assert act.mask_bytes(m, 1, "none") == 0  # the reference bias is dead after the last forward
    assert act.mask_bytes(m, 1, "selective") == act.mask_bytes(m, 1, "full") == 4 * 16  # fp32, read again
    assert act.mask_bytes(m, 1, "none", backend="ascend_910b") == 16  # uint8, FlashAttentionScoreGrad reads it
    # first stage: + embedding dropout bits; last: + the final LayerNorm's fp32 input
    assert act.extras_bytes(m, 1, 1, first=True, last=True, vocab_parallel=False, mode="full") == 64 + 1 + 32


def test_in_flight_micro_batches_per_schedule():
    assert [act.in_flight("1f1b", 4, i, 8) for i in range(4)] == [4, 3, 2, 1]  # stage i holds pp - i
    assert [act.in_flight("1f1b", 4, i, 2) for i in range(4)] == [2, 2, 2, 1]  # at most m
    assert [act.in_flight("gpipe", 4, i, 8) for i in range(4)] == [8, 8, 8, 8]
    # interleaved, v=2: stage 0 holds 2*3 + 1*4 + 1 = 11 chunk-micro-batches of half its layers
    assert act.in_flight("interleaved_1f1b", 4, 0, 8, 2) == 5.5
    assert act.in_flight("1f1b", 1, 0, 8) == 1
    assert act.bubble_fraction("1f1b", 4, 8) == pytest.approx(3 / 8)
    assert act.bubble_fraction("interleaved_1f1b", 4, 8, 2) == pytest.approx(3 / 16)
    assert act.bubble_fraction("gpipe", 1, 8) == 0


def test_interleaved_stage_assignment():
    assert stage_of_layer(8, 2, 2) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert stage_of_layer(8, 4) == [0, 0, 1, 1, 2, 2, 3, 3]


# ------------------------------------------------------------------ collectives and FLOPs


def test_collective_cost_formulas():
    assert ring_allreduce(1000, 4, 100, 0) == pytest.approx(15.0)  # 2 * 3/4 * 1000/100
    assert mesh_allreduce(1000, 4, 100, 0) == pytest.approx(5.0)  # 2 * 1000 / (4 * 100)
    assert ring_allreduce(1000, 4, 100, 1) == pytest.approx(21.0)  # + 2(n-1) alpha
    assert ring_allreduce(1000, 1, 100, 1) == mesh_allreduce(1000, 1, 100, 1) == 0


def test_group_placement_and_hierarchical_time():
    a, b = device_spec("910A"), device_spec("910B")
    assert group_levels(a, 8, 1) == (4, 2, 1)  # two HCCS groups of four in one server
    assert group_levels(b, 8, 1) == (8, 1, 1)  # one full mesh of eight
    assert group_levels(b, 4, 4) == (2, 1, 2)  # dp over mp=4: pairs per server
    assert group_levels(a, 16, 8) == (1, 1, 16)  # one rank per server: RoCE only
    m, alpha = 1e9, 10e-6
    # 910B, 8 ranks in one server: mesh at 56 GB/s x 0.8
    assert allreduce_time(b, m, 8, 1) == pytest.approx(2 * m / (8 * 44.8e9) + 2 * alpha)
    # 910A, 8 ranks: mesh of 4 at 24 GB/s, then the two groups over 12.8 GB/s on a quarter of the message
    assert allreduce_time(a, m, 8, 1) == pytest.approx(2 * m / (4 * 24e9) + 2 * alpha + (m / 4) / 12.8e9 + 2 * alpha)
    # 910A, 16 ranks one per server: ring over RoCE at 12.5 GB/s x 0.8
    assert allreduce_time(a, m, 16, 8) == pytest.approx(2 * 15 / 16 * m / 10e9 + 30 * alpha)
    assert allreduce_time(a, m, 16, 8, fraction=0.5) == pytest.approx((2 * 15 / 16 * m / 10e9 + 30 * alpha) / 2)


def test_flops_hand_worked():
    m = ModelConfig(vocab_size=10, seq_length=8, num_layers=2, hidden_size=4, ffn_hidden_size=16, num_heads=1,
                    dropout=0.0)
    step = Step(m, ParallelConfig(), "none", 2)
    # N_mm = 2 (4*16 + 2*4*16) + 10*4 = 424; per token 6*424 + 12*2*8*4 = 3312; 16 tokens
    assert model_flops_per_step(step) == 16 * 3312
    layer = 6 * (4 * 16 + 2 * 4 * 16) + 12 * 8 * 4
    assert layer_flops_per_token(step, hardware=True) == layer
    assert layer_flops_per_token(replace(step, recompute="full"), hardware=True) == pytest.approx(layer * 4 / 3)
    assert layer_flops_per_token(replace(step, recompute="selective"), hardware=True) == 6 * 192 + 12 * 32 * 4 / 3


# ------------------------------------------------------------------ memory


def test_states_of_an_unsharded_single_device():
    from pangu_ms.models.pangu_alpha import count_parameters

    m = tiny_model_config()
    st = memory_report(Step(m, ParallelConfig(), "none", 4), device_spec("910B"))["per_stage"][0]
    n = count_parameters(m)
    assert (st["weights"], st["gradients"], st["optimizer"]) == (4 * n, 4 * n, 8 * n)
    assert st["weight_copies"] == 0  # fp32 compute: the matmuls read the master weights
    assert st["hccl_buffers"] == 1 * 2 * 200 * 2**20  # the world communicator only


def test_cpu_prediction_is_the_measured_form():
    """CPU: base + sigma N + L (c_layer + c_TH T H) + c_TV T V with the constants bench/planner_memory.py
    fitted, for the kernels it measured (the tiny config: the C++ spec, fp32, no dropout)."""
    from pangu_ms.models.pangu_alpha import count_parameters

    cpu = device_spec("CPU")
    c = cpu.activation_coeffs
    m = tiny_model_config(kernels="fused")
    n, tokens = count_parameters(m), 2 * m.seq_length
    for mode in ("none", "full"):
        want = (cpu.framework_reserve_gb.value * GB + c["states"]["sigma"] * n
                + m.num_layers * (c["states"]["layer"] + c[mode]["TH"] * tokens * m.hidden_size)
                + c["head"]["TV"] * tokens * m.vocab_size)
        got = memory_report(Step(m, ParallelConfig(), mode, 2), cpu)["per_stage"][0]["pool_total"]
        assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("change", [{"kernels": "reference"}, {"dropout": 0.1}])
def test_cpu_constants_refuse_other_kernels(change):
    """The CPU constants describe the fused C++ path; the reference ops (or the fused spec's
    reference attention under dropout) keep other tensors and are not priced with them."""
    m = tiny_model_config(**{"kernels": "fused", **change})
    with pytest.raises(ConfigError, match="measured with the cpu_fused kernels"):
        memory_report(Step(m, ParallelConfig(), "none", 2), device_spec("CPU"))


@pytest.mark.parametrize("name", LAYOUTS)
def test_analytic_weight_table_equals_the_built_model(name):
    """The search prices layouts from params.py; plan checks it against the built model."""
    from pangu_ms.parallel.planner import build_report

    job = load_config(ROOT / "ascend_configs" / "runs" / f"{name}.yaml")
    build_report(job)  # raises PanguError on any difference
    if job.parallel.pp > 1:
        build_report(load_config(ROOT / "ascend_configs" / "runs" / f"{name}.yaml",
                                 ["parallel.pipeline_scheduler=interleaved_1f1b", "parallel.pipeline_chunks=2"]))


def paper_200b(**changes) -> Step:
    job = load_config(ROOT / "ascend_configs/runs/pangu_alpha_200b_2048p.yaml")
    return Step(job.model, replace(job.parallel, **changes), job.recompute.mode, job.train.global_batch_size)


def test_paper_200b_layout_against_the_910a_budget():
    """pp16 x mp8 x dp16, optimizer sharding, full recompute on 2048 x 910A (30 GB usable).

    The shipped batch split (64 micro-batches of 2 rows) fits. With 32 micro-batches of 4 rows,
    stage 0 keeps 16 micro-batches under 1F1B, each with 4 layers' fp32 inputs (this
    implementation's residual stream is fp32), the shared fp32 mask (read again by the
    recomputed cores) and the embedding-dropout bits: 16 GiB and more, over budget. Without
    pipeline stages, or without optimizer sharding, it is over by more than a fifth."""
    dev = device_spec("910A")
    shipped = memory_report(paper_200b(), dev)
    assert shipped["fits"] and shipped["heaviest_stage"] == 0
    assert shipped["per_stage"][0]["in_flight"] == 16 and shipped["per_stage"][0]["pool_total"] < 30 * GB
    fat = memory_report(paper_200b(micro_batches=32), dev)
    assert fat["heaviest_stage"] == 0 and not fat["fits"]
    tokens, h, s = 4 * 1024, 16384, 1024  # 4 rows
    per_micro_batch = 4 * (4 * tokens * h) + 4 * 4 * s * s + tokens * h / 8
    assert fat["per_stage"][0]["in_flight"] == 16
    assert fat["per_stage"][0]["activations"] == pytest.approx(16 * per_micro_batch)
    for changes in ({"pp": 1, "dp": 256, "micro_batches": 1}, {"optimizer_shard": False},
                    {"optimizer_shard": False, "micro_batches": 32}):
        worst = memory_report(paper_200b(**changes), dev)
        assert not worst["fits"], changes
        assert worst["per_stage"][worst["heaviest_stage"]]["pool_total"] > 1.2 * 30 * GB


def test_every_shipped_run_fits_its_device():
    from pangu_ms.parallel.planner import build_report

    for name, device in [("pangu_alpha_2.6b_512p", "910A"), ("pangu_alpha_13b_1024p", "910A"),
                         ("pangu_alpha_200b_2048p", "910A"), ("pangu_alpha_2.6b_8p_910b", "910B"),
                         ("pangu_alpha_13b_16p", "910A")]:
        report = build_report(load_config(ROOT / "ascend_configs" / "runs" / f"{name}.yaml"), device=device)
        assert report["memory"]["fits"], (name, report["binds"])


def test_step_time_parts_and_rates():
    step = paper_200b(micro_batches=64)
    t = step_time(step, device_spec("910A"))
    assert t["step_time_s"] == pytest.approx(sum(t["parts_s"].values()))
    # the bubble is (pp - 1) / m of the busy time
    busy = t["parts_s"]["compute"] + t["parts_s"]["mp_comm"] + t["parts_s"]["pp_p2p"]
    assert t["parts_s"]["pipeline_bubble"] == pytest.approx(busy * 15 / 64)
    tokens = 2048 * 1024
    assert t["tokens_per_s_per_device"] == pytest.approx(tokens / t["step_time_s"] / 2048)
    assert t["mfu"] == pytest.approx(model_flops_per_step(step) / (t["step_time_s"] * 2048 * 256e12))


def test_every_constant_names_a_source():
    for spec in DEVICES.values():
        for row in constant_table(spec):
            assert row["source"] in SOURCES and row["source_text"]


# ------------------------------------------------------------------ validate and search


def test_validate_refuses_bad_pipeline_schedules():
    m = tiny_model_config(num_layers=4)
    with pytest.raises(ConfigError, match=r"num_layers=4 < parallel.pp\*pipeline_chunks = 2\*3"):
        validate(m, ParallelConfig(pp=2, micro_batches=2, pipeline_scheduler="interleaved_1f1b", pipeline_chunks=3),
                 devices=2, global_batch=4)
    with pytest.raises(ConfigError, match="pipeline_scheduler='gpipe' needs pipeline stages"):
        validate(m, ParallelConfig(pipeline_scheduler="gpipe"), devices=1, global_batch=4)
    with pytest.raises(ConfigError, match="interleaved_1f1b needs at least 2 model chunks"):
        ParallelConfig(pp=2, pipeline_scheduler="interleaved_1f1b")
    with pytest.raises(ConfigError, match="only interleaved_1f1b splits"):
        ParallelConfig(pp=2, pipeline_chunks=2)


def test_search_ranks_what_fits_and_counts_the_rest():
    from pangu_ms.parallel.search import candidates, search

    m = load_config(ROOT / "ascend_configs/models/pangu_alpha_2.6b.yaml").model
    dev = device_spec("910B")
    kept, dropped, tried = candidates(m, 8, 32, dev)
    assert tried == len(kept) + sum(dropped.values()) and kept and dropped
    times = [c.time["step_time_s"] for c in kept]
    assert times == sorted(times)
    for c in kept:
        validate(m, c.step.parallel, devices=8, global_batch=32, grad_accum_steps=c.step.grad_accum)
        assert c.memory["fits"] and c.step.parallel.devices == 8
    r = search(m, 8, 32, dev, top=3)
    assert [c["step_time_s"] for c in r["top"]] == times[:3]
    assert r["why"][0].startswith("fastest: dp ")
    assert any(k.startswith("memory:") for k in r["dropped"])
