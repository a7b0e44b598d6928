"""The tokenizer: where its model lives and how to train one (`tokenizer:` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config.loader import check_choices, require


@dataclass
class TokenizerConfig:
    """Where the SentencePiece model lives and how to train one."""

    kind: Literal['pangu', 'code'] = "pangu"
    """pangu: jieba + SentencePiece (the released Chinese tokenizer); code: SentencePiece over
    source text with an exact round trip (`pangu_ms.tokenizer.code`, PanGu-Coder)."""
    path: str = "runs/tokenizer"
    """tokenizer directory holding `vocab.model` (trained or released)."""
    vocab_size: int = 40000
    """vocabulary size when training."""
    model_type: Literal['unigram', 'bpe'] = "unigram"
    """SentencePiece algorithm when training: unigram (as released) or bpe."""
    corpus: str = "peoples_daily_1998"
    """built-in corpus name or a path/glob of user text to train on; in `prepare`, `sources`
    means the cleaned training documents of every `data.sources` entry."""
    byte_fallback: bool = True
    """encode unseen characters as bytes instead of <unk> (models we train)."""
    character_coverage: float = 0.9995
    """share of characters covered by single-character pieces."""
    max_sentences: int = 2_000_000
    """cap on training sentences given to SentencePiece."""
    normalization: Literal['nmt_nfkc', 'identity'] = "nmt_nfkc"
    """SentencePiece normalisation when training: nmt_nfkc (as released; folds full-width forms) or identity
    (required by the code kind: code must round-trip exactly)."""
    indentation: Literal['verbatim', 'tokens'] = "verbatim"
    """code kind: verbatim (leading whitespace as pieces) or tokens (`<INDENT>`/`<DEDENT>` ids
    for changes of indentation depth, newline as `<NEW_LINE>`); both decode exactly."""
    indent_unit: int = 4
    """code kind, indentation `tokens`: spaces per indentation level."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.vocab_size >= 16, "vocab_size", self.vocab_size, "must be at least 16 (10 reserved ids)")
        require(0.9 <= self.character_coverage <= 1.0, "character_coverage", self.character_coverage,
                 "must be in [0.9, 1.0]")
        require(self.max_sentences > 0, "max_sentences", self.max_sentences, "must be positive")
        require(self.kind != "code" or self.normalization == "identity", "normalization", self.normalization,
                 "the code tokenizer needs normalization: identity (NFKC would change source text)")
        require(1 <= self.indent_unit <= 16, "indent_unit", self.indent_unit, "must be in [1, 16] spaces")
