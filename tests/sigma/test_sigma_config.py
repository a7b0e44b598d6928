"""The `experts:` section and the shipped Sigma configs: family, layer choice, capacity, clear
errors, and the exact parameter counts (the paper-size one against the 1.085T it quotes)."""
from __future__ import annotations

import numpy as np
import pytest

from pangu_ms.config import DomainConfig, ExpertsConfig, load_config
from pangu_ms.errors import ConfigError
from pangu_ms.models.pangu_alpha import count_parameters as dense_count
from pangu_ms.models.pangu_sigma import PanguSigmaLM, count_parameters


def _sigma(repo_root, name):
    return load_config(repo_root / "ascend_configs" / "models" / f"pangu_sigma_{name}.yaml")


def test_paper_config_count_and_shape(repo_root):
    job = _sigma(repo_root, "1085b")
    m, ex = job.model, job.experts
    assert job.family == "pangu_sigma"
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_heads) == (40, 5120, 20480, 40)
    assert ex.layer_indices(40) == list(range(32, 40)) and ex.num_experts == 640
    n = count_parameters(m, ex)
    # by hand: the 13B dense count plus 8 layers x 639 more FFNs of 2*5120*20480 + 20480 + 5120
    assert n == 12_800_870_400 + 8 * 639 * 209_740_800 == 1_084_995_840_000
    assert abs(n - 1.085e12) / 1.085e12 < 1e-5


def test_tiny_config_instantiated_count(repo_root):
    job = _sigma(repo_root, "tiny")
    lm = PanguSigmaLM(job.model, job.experts)
    n = sum(int(np.prod(p.shape)) for p in lm.trainable_params())
    assert n == count_parameters(job.model, job.experts) == 8_492_032
    assert n - dense_count(job.model) == 2 * 3 * (2 * 256 * 1024 + 1024 + 256)


def test_dense_configs_are_pangu_alpha(repo_root):
    assert load_config(repo_root / "ascend_configs" / "models" / "pangu_alpha_tiny.yaml").family == "pangu_alpha"


def test_layer_choice_and_capacity():
    ex = ExpertsConfig(domains=[DomainConfig("a", 3), DomainConfig("b", 5)], num_sparse_layers=2)
    assert ex.layer_indices(6) == [4, 5] and ex.expert_offsets() == [0, 3] and ex.domain_id("b") == 1
    assert ExpertsConfig(sparse_layers=[3, 1]).layer_indices(6) == [1, 3]
    assert ex.capacity(100) == 100  # default: nothing drops
    assert ExpertsConfig(domains=ex.domains, capacity_factor=1.5).capacity(100) == 19  # ceil(1.5*100/8)


@pytest.mark.parametrize("section,needle", [
    ({"domains": [{"name": "a", "experts": 0}]}, "experts=0"),
    ({"domains": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
    ({"capacity_factor": 0}, "capacity_factor=0"),
    ({"expert_eps": -1}, "expert_eps=-1"),
    ({"sparse_layers": [1, 1]}, "lists a layer twice"),
    ({"domain": []}, "did you mean 'experts.domains'"),
])
def test_bad_experts_section_names_the_field(tmp_path, section, needle):
    import yaml

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"experts": section}))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_sparse_layer_out_of_range_is_clear():
    with pytest.raises(ValueError, match=r"experts.sparse_layers=\[9\]: \[9\] not below model.num_layers=4"):
        ExpertsConfig(sparse_layers=[9]).layer_indices(4)
    with pytest.raises(ValueError, match="num_sparse_layers=8 exceeds model.num_layers=4"):
        ExpertsConfig().layer_indices(4)
