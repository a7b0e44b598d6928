"""The Ascend context switches are accepted by MindSpore and read back (compiling them is
Ascend-only; setting them works on CPU). The context is reset afterwards."""
from __future__ import annotations

import mindspore as ms

from pangu_ms.config import ParallelConfig
from pangu_ms.parallel.context import set_ascend_context


def test_ascend_context_reads_back(tmp_path):
    strategy = str(tmp_path / "strategy" / "strategy_rank0.ckpt")
    try:
        set_ascend_context(ParallelConfig(dp=2, mp=2, pp=2, micro_batches=2, optimizer_shard=True,
                                          grad_agg_group_mb=64), 8, strategy_file=strategy)
        get = ms.get_auto_parallel_context
        assert get("parallel_mode") == "semi_auto_parallel"
        assert (get("device_num"), get("pipeline_stages"), get("full_batch")) == (8, 2, True)
        assert get("enable_parallel_optimizer") is True
        assert get("strategy_ckpt_config")["save_file"] == strategy
        assert get("comm_fusion")["allreduce"] == {"mode": "size", "config": 64}
    finally:
        ms.reset_auto_parallel_context()
    assert ms.get_auto_parallel_context("parallel_mode") == "stand_alone"
