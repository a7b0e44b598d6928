"""Shared fixtures: MindSpore on CPU in GRAPH_MODE, tiny configs, a compile cache.

Tests mirror the package (`tests/models`, `tests/data`, ...). Compiled graphs are the
expensive part of this suite: share built and compiled Cells through session fixtures.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GLOG_v", "3")
# MindSpore's compile cache files graphs by compile ORDER (compile_cache_<n>.mindir) under one
# dependency hash: a pytest run that compiles graphs in another order loads a wrong graph
# ("Not same shape in device address", "has no default param"). Off unless asked for.
os.environ.setdefault("MS_COMPILER_CACHE_ENABLE", "0")
os.environ.setdefault("MS_COMPILER_CACHE_PATH", str(ROOT / "build" / "ms_compile_cache"))
# every test process finds the venv's bin (msrun workers need it on PATH)
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

import mindspore as ms  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

from pangu_testing import LM_SEQ, tiny_lm_model, tiny_model_config  # noqa: E402
from pangu_ms.config import ModelConfig  # noqa: E402

pytest_plugins = ["cluster_fixtures"]

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

# Property-based tests (hypothesis) set max_examples and deadline per test. Under CI the
# examples are derandomized (the same inputs every run, nothing saved); locally failing
# examples are kept in build/hypothesis and replayed first. HYPOTHESIS_PROFILE picks one.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", database=DirectoryBasedExampleDatabase(str(ROOT / "build" / "hypothesis")))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture()
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(scope="session")
def tiny_lm():
    """A randomly initialised `PanguAlphaLM` of the tiny test shape (seq LM_SEQ), eval mode."""
    return tiny_lm_model(LM_SEQ)


@pytest.fixture(scope="session")
def pd_docs() -> list[str]:
    """The first 200 People's Daily articles (the built-in corpus)."""
    from pangu_ms.data.corpora import load_peoples_daily

    return load_peoples_daily()[:200]


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory, pd_docs):
    """A 2000-piece tokenizer trained once per session on the first 60 People's Daily articles."""
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.tokenizer import segment_batch, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(path=str(out), vocab_size=2000, character_coverage=0.99, corpus="peoples_daily_1998")
    return train_tokenizer(cfg, out, segmented=segment_batch(pd_docs[:60], 1))


def pytest_collection_modifyitems(session, config, items):
    """The kernel tests run first. MindSpore 2.10 in PyNative gets every later Softmax backward
    wrong once one has run over an axis of length 1 (docs/kernels.md), and the kernel tests
    compare PyNative gradients of the reference ops with the kernels': an earlier test that
    trips the defect would make them fail for a reason outside the kernels. The order within
    each group is kept."""
    kernels = Path(__file__).resolve().parent / "kernels"
    items[:] = sorted(items, key=lambda item: Path(str(item.fspath)).resolve().parent != kernels)
