"""Fine-tuning a pretrained checkpoint on a task (`finetune:` section)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class FinetuneConfig:
    """Fine-tuning a pretrained checkpoint on a classification task (`finetune` command)."""

    init: str = "runs/tiny/pretrain"
    """checkpoint to start from: a run dir, its checkpoints/ dir or one step dir."""
    task: str = "sentiment"
    """task name or YAML path (ascend_configs/tasks); trains on its demo_split, evaluates its split."""
    method: Literal['full', 'lora'] = "full"
    """full (every weight) or lora (low-rank adapters on the attention projections)."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / r) x A B."""
    steps: int = 300
    """optimizer steps (the lr schedule comes from the optimizer/schedule sections)."""
    batch_size: int = 16
    """examples per step."""
    max_tokens: int = 96
    """tokens per training example (prompt cut from the left, label kept)."""
    length_buckets: list[int] = field(default_factory=lambda: [32, 64])
    """training row widths: each row is padded to the smallest that holds it (one compiled graph
    per width; max_tokens is always the widest, larger entries are dropped)."""
    lm_loss_weight: float = 0.5
    """weight of the auxiliary next-token loss on the prompt text (GPT fine-tuning); 0 turns it off."""
    lm_positions: int = 48
    """prompt positions sampled per example for that auxiliary loss."""
    dropout: float = 0.1
    """dropout while fine-tuning (hidden states and attention probabilities); the saved model's
    config keeps the pretrained value."""
    ema_decay: float = 0.995
    """per-step decay of the exponential moving average of the weights that is evaluated and
    saved instead of the last step's weights (averages out the step-to-step noise); 0: off."""
    train_examples: int = 0
    """use at most this many training examples (0: all)."""
    eval_limit: int = 0
    """test examples evaluated before and after (0: the whole split)."""
    eval_shots: int = 4
    """K of the few-shot evaluation before fine-tuning (0 skips it)."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.lora_rank >= 1, "lora_rank", self.lora_rank, "must be >= 1")
        require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "must be > 0")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1) (0 turns the average off)")
        require(self.lm_loss_weight >= 0, "lm_loss_weight", self.lm_loss_weight, "must be >= 0 (0 turns it off)")
        require(bool(self.length_buckets) and all(b >= 1 for b in self.length_buckets)
                 and self.length_buckets == sorted(set(self.length_buckets)), "length_buckets",
                 self.length_buckets, "give increasing widths >= 1, e.g. [32, 64, 96, 128]")
        for name in ("steps", "batch_size", "max_tokens", "lm_positions"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("train_examples", "eval_limit", "eval_shots"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
