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

from pangu_testing import tiny_model_config  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture()
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()
