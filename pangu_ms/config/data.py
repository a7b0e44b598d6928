"""Corpora, cleaning and the input pipeline (`data:` section)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pangu_ms.config.loader import check_choices, require


@dataclass
class SourceConfig:
    """One corpus in the mix (the paper fixed a weight and an epoch count per source)."""

    name: str = "peoples_daily_1998"
    """built-in corpus name, or a path, directory or glob of .txt/.jsonl files."""
    weight: float = 1.0
    """relative share of training tokens from this source."""
    epochs: float = 1.0
    """upper bound on passes over this source."""
    text_field: str = "text"
    """field holding the text in .jsonl files."""
    domain: str = ""
    """PanGu-Sigma: the domain (one of `experts.domains`) this source's documents belong to."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.weight > 0, "weight", self.weight, "must be > 0")
        require(self.epochs > 0, "epochs", self.epochs, "must be > 0")


@dataclass
class DataConfig:
    """Cleaning, packing and the training input pipeline."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """corpora to mix."""
    output_dir: str = "runs/data"
    """where prepare writes MindRecord shards, the manifest and the cleaning report."""
    num_shards: int = 4
    """MindRecord files per split."""
    heldout_fraction: float = 0.01
    """share of documents kept apart for held-out loss."""
    min_chars: int = 20
    """documents shorter than this are dropped."""
    max_chars: int = 100_000
    """documents longer than this are split at paragraph boundaries."""
    min_cjk_ratio: float = 0.3
    """minimum share of CJK characters among non-space characters."""
    max_char_repeat: int = 10
    """a run of one character longer than this counts as noise and is squeezed."""
    dedup_exact: bool = True
    """drop documents whose normalised text hash was seen before."""
    near_dup_threshold: float = 0.8
    """MinHash Jaccard estimate at or above which a document is a near duplicate (1.0 disables)."""
    num_workers: int = 0
    """tokenizer worker processes (0: all cores)."""
    shuffle: bool = True
    """shuffle rows each epoch (seeded by run.seed)."""
    reset_at_eod: bool = True
    """restart position ids and block attention at every <eod>."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(len(self.sources) > 0, "sources", self.sources, "list at least one corpus")
        require(self.num_shards >= 1, "num_shards", self.num_shards, "must be >= 1")
        require(0.0 <= self.heldout_fraction < 0.5, "heldout_fraction", self.heldout_fraction, "must be in [0, 0.5)")
        require(self.min_chars >= 1, "min_chars", self.min_chars, "must be >= 1")
        require(self.max_chars > self.min_chars, "max_chars", self.max_chars, f"must exceed min_chars={self.min_chars}")
        require(0.0 <= self.min_cjk_ratio <= 1.0, "min_cjk_ratio", self.min_cjk_ratio, "must be in [0, 1]")
        require(self.max_char_repeat >= 2, "max_char_repeat", self.max_char_repeat, "must be >= 2")
        require(0.0 < self.near_dup_threshold <= 1.0, "near_dup_threshold", self.near_dup_threshold,
                 "must be in (0, 1]")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")
