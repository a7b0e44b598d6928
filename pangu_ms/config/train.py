"""The training loop (`train:`), its checkpoints (`checkpoint:`) and the run (`run:`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class CheckpointConfig:
    """What is saved, how often, and how many are kept (every rank saves its own slices)."""

    every_steps: int = 1000
    """save every this many optimizer steps (and at the end)."""
    keep_last: int = 3
    """complete checkpoints kept; older steps are deleted whole after a successful save."""
    format: Literal['ckpt', 'safetensors'] = "safetensors"
    """per-rank file format: safetensors (merge and reshard stream it) or MindSpore's ckpt."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.every_steps >= 1, "every_steps", self.every_steps, "must be >= 1")
        require(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    """optimizer steps to run."""
    global_batch_size: int = 8
    """rows per optimizer step over all data-parallel ranks and accumulation steps."""
    grad_accum_steps: int = 1
    """micro-steps whose gradients are summed before one optimizer step."""
    eval_every: int = 200
    """held-out loss every this many steps (0 disables)."""
    eval_batches: int = 8
    """held-out batches per evaluation."""
    log_every: int = 10
    """metrics log line every this many steps."""
    init_from: str = ""
    """start from the model weights of the newest complete checkpoint under this path (a run, its
    checkpoints/ or one step dir; no optimizer state, step 0, data from the start): PanGu-Coder's
    stage 2 from stage 1, a `sigma init` output, or a dense model to continue. The checkpoint's
    tokenizer must match the run's. Empty: random init. `--resume` takes precedence."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        require(self.global_batch_size >= 1, "global_batch_size", self.global_batch_size, "must be >= 1")
        require(self.grad_accum_steps >= 1, "grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        require(self.global_batch_size % self.grad_accum_steps == 0, "global_batch_size",
                 self.global_batch_size, f"must be divisible by grad_accum_steps={self.grad_accum_steps}")
        require(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        require(self.eval_batches >= 1, "eval_batches", self.eval_batches, "must be >= 1")
        require(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")


@dataclass
class RunConfig:
    """Where a run writes and how MindSpore executes it."""

    name: str = "pangu_alpha"
    """run name, used in log lines."""
    output_dir: str = "runs/pretrain"
    """checkpoints, metrics, plots and the resolved config go here."""
    seed: int = 1234
    """seed for init, shuffling and dropout."""
    device: Literal['CPU', 'Ascend'] = "CPU"
    """CPU or Ascend."""
    mode: Literal['graph', 'pynative'] = "graph"
    """graph (GRAPH_MODE) or pynative."""
    ascend_chip: Literal['auto', '910A', '910B'] = "auto"
    """Ascend generation for the fused kernels: auto (ask the device), 910A, or 910B (Atlas A2/A3)."""

    def __post_init__(self) -> None:
        check_choices(self)
