"""The Ascend settings ride on an `AutoParallel` wrapper: what it records reads back, and
MindSpore's own compile-time translation of it (`_init_auto_parallel_context`, the step its
compile runs first) accepts it and yields the context the compiler reads. Compiling is
Ascend-only; both steps run on CPU. The process context is reset afterwards."""
from __future__ import annotations

import mindspore as ms
import pytest
from mindspore import nn

from pangu_ms.config import ParallelConfig
from pangu_ms.parallel.context import SCHEDULERS, auto_parallel, dataset_strategy, read_auto_parallel


class _Net(nn.Cell):
    def construct(self, x, y, z):
        return x


def test_dataset_strategy_splits_every_input_over_dp_only():
    p = ParallelConfig(dp=16, mp=8, pp=16, micro_batches=32)
    assert dataset_strategy(p, (2, 2, 3)) == ((16, 1), (16, 1), (16, 1, 1))


@pytest.mark.parametrize("scheduler,chunks", [("1f1b", 1), ("gpipe", 1), ("interleaved_1f1b", 2)])
def test_auto_parallel_records_the_layout(tmp_path, scheduler, chunks):
    p = ParallelConfig(dp=2, mp=2, pp=2, micro_batches=4, optimizer_shard=True, grad_agg_group_mb=64,
                       pipeline_scheduler=scheduler, pipeline_chunks=chunks)
    strategy = str(tmp_path / "strategy_rank0.ckpt")
    back = read_auto_parallel(auto_parallel(_Net(), p, input_ranks=(2, 2, 3), strategy_file=strategy))
    assert back == {
        "parallel_mode": "semi_auto", "dataset_strategy": ((2, 1), (2, 1), (2, 1, 1)), "full_batch": False,
        "pipeline_stages": 2, "pipeline_interleave": scheduler != "1f1b", "pipeline_scheduler":
        {"interleaved_1f1b": "1f1b"}.get(scheduler, scheduler), "optimizer_shard": True, "optimizer_level": "level1",
        "optimizer_threshold_kb": 64, "strategy_file": strategy, "only_trainable_params": False,
        "comm_fusion": {"allreduce": {"mode": "size", "config": 64}}, "gradients_mean": False,
        "loss_repeated_mean": True, "init_param_in_compile": True}


def test_defaults_request_nothing_extra():
    back = read_auto_parallel(auto_parallel(_Net(), ParallelConfig(dp=8), input_ranks=(2, 2, 3)))
    assert (back["pipeline_stages"], back["optimizer_shard"], back["comm_fusion"], back["strategy_file"]) == (
        1, False, {}, "")
    assert read_auto_parallel(auto_parallel(_Net(), ParallelConfig(dp=8), full_batch=True))["full_batch"] is True


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_mindspore_translates_the_wrapper_into_its_context(tmp_path, scheduler):
    from mindspore.parallel._utils import _clear_auto_parallel_context, _init_auto_parallel_context

    p = ParallelConfig(dp=2, mp=2, pp=2, micro_batches=4, optimizer_shard=True, grad_agg_group_mb=32,
                       pipeline_scheduler=scheduler, pipeline_chunks=2 if scheduler == "interleaved_1f1b" else 1)
    net = auto_parallel(_Net(), p, input_ranks=(2, 2, 3), strategy_file=str(tmp_path / "s.ckpt"))
    net._device_num = p.devices  # what get_group_size() returns on the 8-device job (1 in this process)
    get = ms.get_auto_parallel_context
    try:
        _init_auto_parallel_context(net)
        assert get("parallel_mode") == "semi_auto_parallel" and get("device_num") == 8
        assert (get("pipeline_stages"), get("full_batch")) == (2, False)
        assert get("dataset_strategy") == [[2, 1], [2, 1], [2, 1, 1]]
        assert (get("pipeline_interleave"), get("pipeline_scheduler")) == SCHEDULERS[scheduler]
        assert get("enable_parallel_optimizer") is True
        assert get("comm_fusion")["allreduce"] == {"mode": "size", "config": 32}
        assert get("strategy_ckpt_config")["save_file"] == str(tmp_path / "s.ckpt")
    finally:
        _clear_auto_parallel_context(net)
    assert get("parallel_mode") == "stand_alone"


def test_mindspore_refuses_gpipe_without_its_interleaved_pass():
    """Why `SCHEDULERS` maps gpipe to interleave=True."""
    from mindspore.parallel._utils import _clear_auto_parallel_context, _init_auto_parallel_context
    from mindspore.parallel.auto_parallel import AutoParallel

    net = AutoParallel(_Net(), parallel_mode="semi_auto")
    net.pipeline(stages=2, interleave=False, scheduler="gpipe")
    net._device_num = 8
    try:
        with pytest.raises(TypeError, match="only '1f1b' is allowed"):
            _init_auto_parallel_context(net)
    finally:
        _clear_auto_parallel_context(net)
