"""PanGu-Coder configs: the paper's two shapes and the tiny CPU one, with exact parameter counts."""
from __future__ import annotations

import numpy as np
import pytest

from pangu_ms.config import load_config
from pangu_ms.models.pangu_alpha import PanguAlphaLM, count_parameters


def _job(repo_root, name):
    return load_config(repo_root / "ascend_configs" / "models" / f"pangu_coder_{name}.yaml")


@pytest.mark.parametrize("name,shape,expected", [
    ("317m", (24, 1024, 4096, 16), 347_278_336),
    ("2.6b", (32, 2560, 10240, 32), 2_630_069_760),
])
def test_paper_shapes_and_counts(repo_root, name, shape, expected):
    job = _job(repo_root, name)
    m = job.model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_heads, m.seq_length) == shape + (1024,)
    assert m.vocab_size == 41_865 and job.tokenizer.kind == "code"
    # the formula by hand: V*H + 2*S*H + 2H + L*(4(H^2+H) + 2HF + F + H + 4H)
    v, s, h, f, n = m.vocab_size, m.seq_length, m.hidden_size, m.ffn_hidden_size, m.num_layers
    assert count_parameters(m) == v * h + 2 * s * h + 2 * h + n * (4 * (h * h + h) + 2 * h * f + f + h + 4 * h) == expected


def test_2p6b_coder_instantiates_to_the_formula(repo_root):
    import mindspore as ms

    cfg = _job(repo_root, "2.6b").model
    with ms.nn.utils.no_init_parameters():
        n = sum(int(np.prod(p.shape)) for p in PanguAlphaLM(cfg).trainable_params())
    assert n == count_parameters(cfg) == 2_630_069_760


def test_vocabulary_is_configurable(repo_root):
    job = load_config(repo_root / "ascend_configs" / "models" / "pangu_coder_2.6b.yaml", ["model.vocab_size=40000"])
    assert count_parameters(job.model) == 2_625_295_360  # PanGu-alpha 2.6B's count: the reused vocabulary


def test_tiny_coder_exact_by_instantiation(repo_root):
    cfg = _job(repo_root, "tiny").model
    n = sum(int(np.prod(p.shape)) for p in PanguAlphaLM(cfg).trainable_params())
    assert n == count_parameters(cfg) == 5_469_696


def test_tiny_run_config_names_the_code_corpus(repo_root):
    job = load_config(repo_root / "ascend_configs" / "runs" / "pangu_coder_tiny_cpu.yaml")
    assert [s.name for s in job.data.sources] == ["python_stdlib"] and job.code.pair_layout == "tagged"
    assert job.tokenizer.kind == "code" and job.tokenizer.vocab_size <= job.model.vocab_size


def test_tiny_stage2_config_starts_from_stage1(repo_root):
    runs = repo_root / "ascend_configs" / "runs"
    one, two = load_config(runs / "pangu_coder_tiny_cpu.yaml"), load_config(runs / "pangu_coder_tiny_cpu_stage2.yaml")
    assert (one.code.stage, two.code.stage) == ("clm", "code_clm")
    assert two.train.init_from == one.run.output_dir and two.run.output_dir != one.run.output_dir
    assert two.data.output_dir != one.data.output_dir  # stage-2 shards do not replace stage 1's
    assert two.model == one.model and two.tokenizer == one.tokenizer  # what init_from requires


def test_docstring_masking_is_refused_where_there_is_no_separate_docstring():
    from pangu_ms.errors import ConfigError

    with pytest.raises(ConfigError, match="docstring_mask.*pair_layout: tagged"):
        load_config(None, ["code.pair_layout=inline", "code.docstring_mask=0.15"])
    with pytest.raises(ConfigError, match="docstring_mask"):
        load_config(None, ["code.docstring_mask=1.0"])
