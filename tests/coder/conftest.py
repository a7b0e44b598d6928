"""PanGu-Coder fixtures: the standard-library corpus (read once) and a small code tokenizer."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def stdlib_corpus():
    """The filtered, split, decontaminated standard library of this interpreter."""
    from pangu_ms.data.code_corpus import load_code_corpus

    return load_code_corpus("python_stdlib")


def stdlib_sample(n: int) -> list[str]:
    """The first n standard-library modules at the top level (cheap: no corpus filtering)."""
    from pangu_ms.data.code_corpus import stdlib_root

    return [p.read_text(encoding="utf-8") for p in sorted(stdlib_root().glob("*.py"))[:n]]


@pytest.fixture(scope="session")
def code_tokenizer_dir(tmp_path_factory):
    """A 2000-piece code tokenizer trained on 40 standard-library modules (verbatim indentation)."""
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.tokenizer import train_code_tokenizer

    out = tmp_path_factory.mktemp("code_tok")
    cfg = TokenizerConfig(kind="code", path=str(out), vocab_size=2000, normalization="identity",
                          character_coverage=0.9999, corpus="python_stdlib")
    train_code_tokenizer(cfg, out, texts=stdlib_sample(40))
    return out


@pytest.fixture(scope="session")
def code_tokenizer(code_tokenizer_dir):
    from pangu_ms.tokenizer import CodeTokenizer

    return CodeTokenizer.from_dir(code_tokenizer_dir)
