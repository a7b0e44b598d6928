"""The device mesh (`parallel:`) and activation recomputation (`recompute:`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class ParallelConfig:
    """Device mesh and distributed-training switches (dp data, mp model, pp pipeline)."""

    dp: int = 1
    """data-parallel degree."""
    mp: int = 1
    """op-level model-parallel degree."""
    pp: int = 1
    """pipeline stages."""
    ep: int = 1
    """expert-parallel degree (PanGu-Sigma): carved out of dp, so it divides dp; 1 for PanGu-alpha."""
    micro_batches: int = 1
    """micro-batches per step when pipelining."""
    pipeline_scheduler: Literal['1f1b', 'gpipe', 'interleaved_1f1b'] = "1f1b"
    """pipeline schedule: 1f1b (each backward as soon as its forward is done), gpipe (all forwards, then all
    backwards: more memory) or interleaved_1f1b (`pipeline_chunks` model chunks per device: a smaller bubble)."""
    pipeline_chunks: int = 1
    """model chunks (virtual stages) per device under interleaved_1f1b (>= 2 there); 1 for the other schedules."""
    vocab_emb_dp: bool = True
    """replicate the word embedding over mp (False: split it over the vocabulary)."""
    optimizer_shard: bool = False
    """shard optimizer state over the data-parallel group (Ascend only)."""
    grad_agg_group_mb: int = 0
    """gradient all-reduce fusion bucket size in MB (0: framework default)."""
    grad_agg_layers: int = 4
    """consecutive layers whose gradient all-reduces share one fusion group (0: framework default)."""

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("dp", "mp", "pp", "ep", "micro_batches"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.pipeline_chunks >= 1, "pipeline_chunks", self.pipeline_chunks, "must be >= 1")
        if self.pipeline_scheduler == "interleaved_1f1b":
            require(self.pipeline_chunks >= 2, "pipeline_chunks", self.pipeline_chunks,
                    "interleaved_1f1b needs at least 2 model chunks per device (or use pipeline_scheduler=1f1b)")
        else:
            require(self.pipeline_chunks == 1, "pipeline_chunks", self.pipeline_chunks,
                    f"only interleaved_1f1b splits a device's layers into chunks; set 1 for {self.pipeline_scheduler}")
        require(self.grad_agg_group_mb >= 0, "grad_agg_group_mb", self.grad_agg_group_mb, "must be >= 0")
        require(self.grad_agg_layers >= 0, "grad_agg_layers", self.grad_agg_layers, "must be >= 0")

    @property
    def devices(self) -> int:
        return self.dp * self.mp * self.pp

    @property
    def edp(self) -> int:
        """Data-parallel replicas of each expert: dp // ep (ep ranks hold different experts)."""
        return max(1, self.dp // self.ep)


@dataclass
class RecomputeConfig:
    """Activation rematerialisation."""

    mode: Literal['none', 'full', 'selective'] = "none"
    """none, full (every layer) or selective (attention core only)."""

    def __post_init__(self) -> None:
        check_choices(self)
