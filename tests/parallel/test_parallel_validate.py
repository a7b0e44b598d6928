"""validate(): every cross-check names the numbers and the fix; init_parallel launch handling."""
from __future__ import annotations

from pathlib import Path

import pytest
from pangu_testing import tiny_model_config

from pangu_ms.config import ModelConfig, ParallelConfig, load_config
from pangu_ms.errors import ConfigError
from pangu_ms.parallel import init_parallel, validate
from pangu_ms.parallel.context import effective_parallel, launched_world_size

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["pangu_alpha_2.6b_512p", "pangu_alpha_13b_1024p", "pangu_alpha_200b_2048p",
           "pangu_alpha_2.6b_8p_910b", "pangu_alpha_13b_16p"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_layouts_validate(name):
    job = load_config(ROOT / "ascend_configs" / "runs" / f"{name}.yaml")
    assert job.run.device == "Ascend"
    validate(job.model, job.parallel, devices=job.parallel.devices, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps, device="Ascend")


def test_paper_200b_mesh():
    p = load_config(ROOT / "ascend_configs/runs/pangu_alpha_200b_2048p.yaml").parallel
    assert (p.pp, p.dp, p.mp, p.devices, p.optimizer_shard) == (16, 16, 8, 2048, True)


@pytest.mark.parametrize("kwargs,devices,batch,needle", [
    (dict(dp=2, mp=2), 8, 8, "dp*mp*pp = 2*2*1 = 4 but there are 8 devices"),
    (dict(mp=3), 3, 8, "model.num_heads=4 is not divisible by parallel.mp=3"),
    (dict(mp=8), 8, 8, "model.num_heads=4 is not divisible by parallel.mp=8"),
    (dict(pp=4, micro_batches=4), 4, 8, "model.num_layers=3 < parallel.pp=4"),
    (dict(pp=2), 2, 8, "parallel.micro_batches=1 < parallel.pp=2"),
    (dict(dp=2, micro_batches=3), 2, 8, "global_batch_size=8 is not divisible by parallel.dp*micro_batches"),
    (dict(ep=2), 1, 8, "parallel.ep=2: expert parallelism is reserved for PanGu-Sigma"),
])
def test_each_problem_is_named(kwargs, devices, batch, needle):
    with pytest.raises(ConfigError, match="invalid parallel layout") as err:
        validate(tiny_model_config(), ParallelConfig(**kwargs), devices=devices, global_batch=batch)
    assert needle in str(err.value)


def test_vocab_divisibility_only_when_vocab_is_split():
    m = tiny_model_config(vocab_size=97)
    validate(m, ParallelConfig(mp=2, vocab_emb_dp=True), devices=2, global_batch=8)
    with pytest.raises(ConfigError, match="model.vocab_size=97 is not divisible by parallel.mp=2"):
        validate(m, ParallelConfig(mp=2, vocab_emb_dp=False), devices=2, global_batch=8)


def test_all_problems_reported_together_with_fixes():
    with pytest.raises(ConfigError) as err:
        validate(ModelConfig(num_heads=32, hidden_size=2560), ParallelConfig(dp=3, mp=3), devices=8,
                 global_batch=8)
    msg = str(err.value)
    assert msg.count("\n  - ") == 4  # mesh, heads, ffn, batch
    assert "8 is not divisible by mp*pp=3" in msg and "pick mp from [1, 2, 4, 8, 16, 32]" in msg
    assert "use a global batch that is a multiple of 3 (e.g. 6 or 9)" in msg


def test_cpu_refuses_model_parallel_and_optimizer_shard():
    m = tiny_model_config()
    with pytest.raises(ConfigError, match="only data parallel on CPU"):
        validate(m, ParallelConfig(dp=1, mp=2), devices=2, global_batch=8, device="CPU")
    with pytest.raises(ConfigError, match="optimizer_shard=false on CPU"):
        validate(m, ParallelConfig(dp=2, optimizer_shard=True), devices=2, global_batch=8, device="CPU")
    validate(m, ParallelConfig(dp=2), devices=2, global_batch=8, device="CPU")


def test_launch_detection_and_effective_mesh():
    assert launched_world_size({}) == 1
    assert launched_world_size({"MS_WORKER_NUM": "2"}) == 2
    assert launched_world_size({"RANK_SIZE": "8"}) == 8
    with pytest.raises(ConfigError, match="RANK_SIZE='x' is not an integer"):
        launched_world_size({"RANK_SIZE": "x"})
    assert effective_parallel(ParallelConfig(), 4).dp == 4  # dp-only config scales to the launch
    assert effective_parallel(ParallelConfig(dp=2, mp=2), 4).mp == 2
    with pytest.raises(ConfigError, match=r"launch 4 workers \(msrun --worker_num=4\)"):
        effective_parallel(ParallelConfig(dp=2, mp=2), 2)


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("MS_WORKER_NUM", raising=False)
    monkeypatch.delenv("RANK_SIZE", raising=False)
    info = init_parallel(load_config(ROOT / "ascend_configs/runs/pangu_alpha_tiny_cpu.yaml"))
    assert (info.rank, info.world_size, info.dp_rank, info.dp_size, info.is_distributed) == (0, 1, 0, 1, False)
