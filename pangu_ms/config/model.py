"""Model shape and numerics (`model:` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class ModelConfig:
    """PanGu-alpha shape and numerics (DESIGN.md: `num_layers` counts the query layer)."""

    vocab_size: int = 40000
    """rows of the (tied) word-embedding table."""
    seq_length: int = 1024
    """tokens per training row (the model sees `seq_length`, labels are shifted by one)."""
    num_layers: int = 32
    """transformer layers including the top query layer."""
    hidden_size: int = 2560
    """model width H."""
    ffn_hidden_size: int = 10240
    """feed-forward inner width (4H in the paper)."""
    num_heads: int = 32
    """attention heads N; head dim D = H / N."""
    dropout: float = 0.1
    """dropout on embeddings, attention probabilities and residual branches."""
    layernorm_eps: float = 1e-5
    """LayerNorm epsilon (computed in fp32)."""
    init_std: float = 0.02
    """standard deviation of Normal init; output projections are scaled by 1/sqrt(2*layers)."""
    compute_dtype: Literal['float32', 'float16', 'bfloat16'] = "float32"
    """matmul dtype: float32 (CPU), float16 (910A) or bfloat16 (910B); LayerNorm/softmax/loss stay fp32."""
    activation: Literal['gelu', 'fast_gelu'] = "gelu"
    """FFN activation: gelu (tanh form, the 2021 release) or fast_gelu (x*sigmoid(1.702x), MindFormers)."""
    kernels: Literal['reference', 'fused'] = "fused"
    """reference (plain MindSpore ops) or fused (this device's fused kernels; reference where none)."""
    eod_id: int = 8
    """end-of-document id (`<eod>` in the released vocabulary)."""
    pad_id: int = 6
    """padding id; labels equal to it are not scored."""

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("vocab_size", "seq_length", "num_layers", "hidden_size", "ffn_hidden_size", "num_heads"):
            require(getattr(self, name) > 0, name, getattr(self, name), "must be a positive integer")
        require(self.num_layers >= 2, "num_layers", self.num_layers,
                 "needs at least 2 (one block plus the top query layer)")
        require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                 f"must be divisible by num_heads={self.num_heads}")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        require(self.layernorm_eps > 0, "layernorm_eps", self.layernorm_eps, "must be > 0")
        require(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        for name in ("eod_id", "pad_id"):
            v = getattr(self, name)
            require(0 <= v < self.vocab_size, name, v, f"must be an id below vocab_size={self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads
