"""PanGu-Coder data: the code corpus filters, the split, HumanEval decontamination and the
layout of a stage-2 pair (`code:` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class CodeConfig:
    """How code corpora are filtered and split, and how a docstring-to-code pair becomes a row."""

    max_file_bytes: int = 1_000_000
    """files of this many bytes or more are dropped (the secondary sources' 1 MB)."""
    max_mean_line_chars: float = 100.0
    """files whose mean line length reaches this are dropped."""
    max_line_chars: int = 1000
    """files with a line of this many characters or more are dropped."""
    heldout_fraction: float = 0.05
    """share of files kept apart (split by file, by a seeded hash of its name)."""
    split_seed: int = 0
    """seed of the train/held-out split."""
    decontaminate: bool = True
    """drop files that overlap HumanEval (entry-point names, long n-grams of prompts and solutions)."""
    ngram: int = 20
    """length in code tokens of an n-gram shared with HumanEval that marks a file as overlapping."""
    stage: Literal['clm', 'code_clm'] = "clm"
    """what `prepare` makes of code sources: clm (stage 1) = whole files, causal LM on every token;
    code_clm (stage 2) = the files' docstring-to-function pairs in `pair_layout`, each followed by
    `<eod>`, with a `loss_mask` column that keeps the loss on the code tokens and `<eot>` only."""
    pair_layout: Literal['tagged', 'inline'] = "tagged"
    """stage-2 row: tagged = `<comments> docstring <python> code <eot>`; inline = the function as
    written (signature and docstring, then the body) `<eot>`, with the loss on the body."""
    docstring_mask: float = 0.0
    """share of each training pair's docstring ids replaced by `<mask>` (tagged layout only; a
    secondary source on PanGu-Coder tried 0.15). Held-out pairs keep their whole docstring."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.max_file_bytes > 0, "max_file_bytes", self.max_file_bytes, "must be > 0")
        require(self.max_mean_line_chars > 0, "max_mean_line_chars", self.max_mean_line_chars, "must be > 0")
        require(self.max_line_chars > 0, "max_line_chars", self.max_line_chars, "must be > 0")
        require(0.0 <= self.heldout_fraction < 0.5, "heldout_fraction", self.heldout_fraction, "must be in [0, 0.5)")
        require(0.0 <= self.docstring_mask < 1.0, "docstring_mask", self.docstring_mask, "must be in [0, 1)")
        require(self.docstring_mask == 0.0 or self.pair_layout == "tagged", "docstring_mask", self.docstring_mask,
                "needs pair_layout: tagged (inline rows have no separate docstring)")
        require(self.ngram >= 5, "ngram", self.ngram, "must be >= 5 (shorter n-grams match ordinary code)")
