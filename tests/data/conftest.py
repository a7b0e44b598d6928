"""Fixtures for data tests: a small tokenizer trained once per session on People's Daily text."""
from __future__ import annotations

import pytest

from pangu_ms.config import TokenizerConfig


def small_corpus(n_docs: int = 60) -> list[str]:
    """The first People's Daily articles (about 40k characters, 2k distinct)."""
    from pangu_ms.data.corpora import load_peoples_daily

    return load_peoples_daily()[:n_docs]


@pytest.fixture(scope="session")
def pd_docs() -> list[str]:
    """The first 200 People's Daily articles."""
    return small_corpus(200)


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory):
    from pangu_ms.tokenizer import segment_batch, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(path=str(out), vocab_size=2000, character_coverage=0.99, corpus="peoples_daily_1998")
    return train_tokenizer(cfg, out, segmented=segment_batch(small_corpus(), 1))
