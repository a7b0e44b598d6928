"""AdamW with loss scaling and clipping (`optimizer:`), the learning-rate schedule (`schedule:`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class OptimizerConfig:
    """AdamW, loss scaling and clipping (paper: betas 0.9/0.95, eps 1e-8, wd 0.1)."""

    lr: float = 1e-4
    """peak learning rate."""
    min_lr: float = 1e-6
    """learning rate at the end of the cosine decay."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """decoupled weight decay; not applied to LayerNorm parameters and biases."""
    clip_norm: float = 1.0
    """global gradient-norm clip (0 disables)."""
    loss_scale: float = 2.0 ** 32
    """initial dynamic loss scale."""
    loss_scale_factor: float = 2.0
    """factor the scale is divided by on overflow and multiplied by after a clean window."""
    loss_scale_window: int = 1000
    """clean steps before the scale grows."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        for name in ("beta1", "beta2"):
            require(0.0 <= getattr(self, name) < 1.0, name, getattr(self, name), "must be in [0, 1)")
        require(self.eps > 0, "eps", self.eps, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(self.clip_norm >= 0, "clip_norm", self.clip_norm, "must be >= 0 (0 disables)")
        require(self.loss_scale >= 1, "loss_scale", self.loss_scale, "must be >= 1")
        require(self.loss_scale_factor > 1, "loss_scale_factor", self.loss_scale_factor, "must be > 1")
        require(self.loss_scale_window >= 1, "loss_scale_window", self.loss_scale_window, "must be >= 1")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup then cosine decay to `optimizer.min_lr`."""

    warmup_steps: int = 2000
    """steps of linear warmup from 0 to the peak lr."""
    decay_steps: int = 0
    """steps of cosine decay after warmup (0: until train.steps)."""
    kind: Literal['cosine', 'constant'] = "cosine"
    """decay shape after warmup: cosine or constant."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        require(self.decay_steps >= 0, "decay_steps", self.decay_steps, "must be >= 0")
