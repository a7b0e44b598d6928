"""Fixtures shared by the inference tests (import them into a test module to use them)."""
from __future__ import annotations

import os

import mindspore as ms
import pytest

from pangu_testing import tiny_model_config
from pangu_ms.models.pangu_alpha import PanguAlphaLM

SEQ = 16


@pytest.fixture(scope="session")
def tiny_lm() -> PanguAlphaLM:
    ms.set_seed(7)
    lm = PanguAlphaLM(tiny_model_config(seq_length=SEQ))
    lm.set_train(False)
    return lm


@pytest.fixture(autouse=True, scope="module")
def no_compile_cache():
    """Compile this module's graphs afresh.

    MindSpore's compile cache (MS_COMPILER_CACHE_ENABLE, set in tests/conftest.py) files
    graphs by compile order and hashes only the entry script's imports (pytest's, not ours):
    a run that compiles in another order, or after a code change, gets another Cell's graph.
    """
    saved = os.environ.get("MS_COMPILER_CACHE_ENABLE")
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"
    yield
    if saved is None:
        os.environ.pop("MS_COMPILER_CACHE_ENABLE", None)
    else:
        os.environ["MS_COMPILER_CACHE_ENABLE"] = saved
