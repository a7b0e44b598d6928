"""Config loading: composition, overrides, and errors that name file, key and value."""
from __future__ import annotations

import pytest

from pangu_ms.config import JobConfig, config_from_dict, load_config
from pangu_ms.errors import ConfigError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_base_config_composes_and_later_values_win(tmp_path):
    write(tmp_path, "base.yaml", "model:\n  hidden_size: 64\n  num_heads: 4\ntrain:\n  steps: 5\n")
    run = write(tmp_path, "run.yaml", "base_config: base.yaml\ntrain:\n  steps: 7\n")
    cfg = load_config(run)
    assert cfg.model.hidden_size == 64 and cfg.model.num_heads == 4
    assert cfg.train.steps == 7


def test_set_overrides_are_type_checked(tmp_path):
    run = write(tmp_path, "run.yaml", "train:\n  steps: 7\n")
    cfg = load_config(run, ["train.steps=11", "optimizer.lr=3e-4", "parallel.vocab_emb_dp=false"])
    assert cfg.train.steps == 11 and cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.parallel.vocab_emb_dp is False
    with pytest.raises(ConfigError, match=r"train\.steps='many': expected an integer"):
        load_config(run, ["train.steps=many"])


def test_unknown_key_names_file_key_and_nearest(tmp_path):
    run = write(tmp_path, "run.yaml", "model:\n  hidden_sise: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(run)
    msg = str(err.value)
    assert str(run) in msg and "model.hidden_sise" in msg and "did you mean 'model.hidden_size'" in msg


def test_unknown_section_suggests_nearest(tmp_path):
    run = write(tmp_path, "run.yaml", "optimiser:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'optimizer'"):
        load_config(run)


def test_out_of_range_value_names_dotted_key(tmp_path):
    run = write(tmp_path, "run.yaml", "model:\n  hidden_size: 30\n  num_heads: 4\n")
    with pytest.raises(ConfigError, match=r"model\.hidden_size=30: must be divisible by num_heads=4"):
        load_config(run)
    run = write(tmp_path, "run2.yaml", "optimizer:\n  beta2: 1.5\n")
    with pytest.raises(ConfigError, match=r"optimizer\.beta2=1\.5"):
        load_config(run)


def test_finetune_length_buckets_must_increase():
    with pytest.raises(ConfigError, match=r"finetune\.length_buckets=\[64, 32\]: give increasing widths"):
        load_config(None, ["finetune.length_buckets=[64, 32]"])
    assert load_config(None, ["finetune.length_buckets=[16, 48]"]).finetune.length_buckets == [16, 48]


def test_wrong_type_in_list_of_sources(tmp_path):
    run = write(tmp_path, "run.yaml", "data:\n  sources:\n    - name: a\n      weight: heavy\n")
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.weight='heavy': expected a number"):
        load_config(run)


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path, "a.yaml", "base_config: b.yaml\n")
    write(tmp_path, "b.yaml", "base_config: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_round_trip_through_dict():
    cfg = JobConfig()
    assert config_from_dict(cfg.to_dict()) == cfg


def test_checkpoint_config_with_the_old_length_bucket_key_still_loads():
    tree = JobConfig().to_dict()
    del tree["finetune"]["length_buckets"]
    tree["finetune"].update(length_bucket=32, max_tokens=128)
    assert config_from_dict(tree).finetune.length_buckets == [32, 64, 96, 128]


@pytest.mark.parametrize("name", ["tiny", "small", "2.6b", "13b", "200b"])
def test_shipped_model_sizes_load(repo_root, name):
    cfg = load_config(repo_root / "ascend_configs" / "models" / f"pangu_alpha_{name}.yaml")
    assert cfg.model.hidden_size % cfg.model.num_heads == 0


def test_quickstart_config_loads(repo_root):
    cfg = load_config(repo_root / "ascend_configs" / "runs" / "pangu_alpha_tiny_cpu.yaml")
    assert cfg.model.vocab_size == cfg.tokenizer.vocab_size == 8000


def test_choice_fields_are_checked_with_the_nearest_choice(tmp_path):
    run = write(tmp_path, "run.yaml", "run:\n  device: cpu\n")
    with pytest.raises(ConfigError, match=r"run\.device='cpu': use one of 'CPU', 'Ascend'; did you mean 'CPU'\?"):
        load_config(run)
    with pytest.raises(ConfigError, match=r"recompute\.mode='ful': .*did you mean 'full'"):
        load_config(run, ["run.device=CPU", "recompute.mode=ful"])
    # direct construction is checked the same way as loading
    from pangu_ms.config import ModelConfig

    with pytest.raises(ConfigError, match=r"compute_dtype='bf16': use one of 'float32', 'float16', 'bfloat16'"):
        ModelConfig(compute_dtype="bf16")
    with pytest.raises(ConfigError, match=r"model\.kernels='fusd': .*did you mean 'fused'"):
        load_config(run, ["run.device=CPU", "model.kernels=fusd"])


@pytest.mark.parametrize("device,chip,refused", [("CPU", "auto", True), ("Ascend", "910A", True),
                                                 ("Ascend", "910B", False), ("Ascend", "auto", False)])
def test_bf16_is_refused_where_it_cannot_run(tmp_path, device, chip, refused):
    from pangu_ms.config import validate_job

    run = write(tmp_path, "run.yaml", f"model:\n  compute_dtype: bfloat16\nrun:\n  device: {device}\n"
                                      f"  ascend_chip: '{chip}'\n")
    job = load_config(run)
    if refused:
        with pytest.raises(ConfigError, match=rf"model\.compute_dtype=bfloat16 with run\.device={device}"):
            validate_job(job, "pretrain")
    else:
        validate_job(job, "pretrain")


def test_every_choice_field_is_a_literal_checked_by_the_loader():
    """No enumerated string field is left as a plain `str` checked by hand (STYLE: one rule)."""
    import dataclasses
    import typing

    import pangu_ms.config as c

    hints = typing.get_type_hints(JobConfig, vars(c))
    choices = {}
    for f in dataclasses.fields(JobConfig):
        # an optional section (`experts: ExpertsConfig | None`) is checked as its class
        cls = next(t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None))
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if typing.get_origin(tp) is typing.Literal:
                choices[f"{cls.__name__}.{f.name}"] = typing.get_args(tp)
    assert choices == {
        "ModelConfig.compute_dtype": ("float32", "float16", "bfloat16"),
        "ModelConfig.activation": ("gelu", "fast_gelu"), "ModelConfig.kernels": ("reference", "fused"),
        "RunConfig.ascend_chip": ("auto", "910A", "910B"),
        "TokenizerConfig.model_type": ("unigram", "bpe"), "TokenizerConfig.normalization": ("nmt_nfkc", "identity"),
        "RecomputeConfig.mode": ("none", "full", "selective"), "ScheduleConfig.kind": ("cosine", "constant"),
        "ParallelConfig.pipeline_scheduler": ("1f1b", "gpipe", "interleaved_1f1b"),
        "CheckpointConfig.format": ("ckpt", "safetensors"), "RunConfig.device": ("CPU", "Ascend"),
        "RunConfig.mode": ("graph", "pynative"), "FinetuneConfig.method": ("full", "lora"),
        "TokenizerConfig.kind": ("pangu", "code"), "TokenizerConfig.indentation": ("verbatim", "tokens"),
        "CodeConfig.stage": ("clm", "code_clm"),
        "CodeConfig.pair_layout": ("tagged", "inline"),
    }


def test_validate_job_lists_every_cross_section_problem(tmp_path):
    from pangu_ms.config import validate_job

    run = write(tmp_path, "run.yaml", "model:\n  vocab_size: 500\n  seq_length: 32\ntokenizer:\n  vocab_size: 800\n"
                "parallel:\n  dp: 3\ntrain:\n  global_batch_size: 8\nfinetune:\n  max_tokens: 64\n")
    job = load_config(run)
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=800 exceeds model\.vocab_size=500"):
        validate_job(job, "prepare")
    with pytest.raises(ConfigError, match=r"global_batch_size=8 is not divisible by .* = 3\*1\*1 = 3"):
        validate_job(job, "pretrain")
    with pytest.raises(ConfigError, match=r"finetune\.max_tokens=64 exceeds model\.seq_length=32"):
        validate_job(job, "finetune")
    fixed = load_config(run, ["tokenizer.vocab_size=500", "parallel.dp=2", "finetune.max_tokens=32"])
    for command in ("prepare", "pretrain", "finetune"):
        validate_job(fixed, command)  # no error
