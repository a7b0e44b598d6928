"""Exact parameter counts: instantiation == `count_parameters` for the CPU sizes, the shared
formula for the paper sizes."""
from __future__ import annotations

import numpy as np
import pytest

from pangu_ms.config import load_config
from pangu_ms.models.pangu_alpha import PanguAlphaLM, count_parameters


def _model_cfg(repo_root, name):
    return load_config(repo_root / "ascend_configs" / "models" / f"pangu_alpha_{name}.yaml").model


def _instantiated(cfg) -> int:
    return sum(int(np.prod(p.shape)) for p in PanguAlphaLM(cfg).trainable_params())


@pytest.mark.parametrize("name,expected", [("tiny", 5_338_624), ("small", 26_425_856)])
def test_cpu_sizes_exact_by_instantiation(repo_root, name, expected):
    cfg = _model_cfg(repo_root, name)
    assert _instantiated(cfg) == count_parameters(cfg) == expected


def test_conftest_tiny_model_matches_formula(tiny_cfg):
    assert _instantiated(tiny_cfg) == count_parameters(tiny_cfg)


@pytest.mark.parametrize("name,expected,paper", [
    ("2.6b", 2_625_295_360, 2.6e9),
    # The 13B shape of the paper's Table 1 (40 layers, H 5120, F 20480, V 40000, S 1024)
    # gives 12.80B with this formula; the paper quotes 13.1B. The published shape cannot
    # reach 13.1B: even an untied output head (+V*H = 0.20B) would give 13.01B. We keep the
    # formula (it is what the released code instantiates) and state the 2.3% gap here.
    ("13b", 12_800_870_400, 13.1e9),
    ("200b", 206_861_008_896, 207.0e9),
])
def test_paper_sizes_formula(repo_root, name, expected, paper):
    cfg = _model_cfg(repo_root, name)
    n = count_parameters(cfg)
    assert n == expected
    tolerance = 0.025 if name == "13b" else 0.01
    assert abs(n - paper) / paper < tolerance


def test_2p6b_instantiated_without_allocation_matches_formula(repo_root):
    import mindspore as ms

    cfg = _model_cfg(repo_root, "2.6b")
    with ms.nn.utils.no_init_parameters():
        n = _instantiated(cfg)
    assert n == count_parameters(cfg) == 2_625_295_360
