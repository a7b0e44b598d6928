"""Typed job configuration: one dataclass per concept, composed into `JobConfig`.

`load_config(path, overrides)` reads a YAML file (with `base_config:` composition) and
`--set section.field=value` overrides, type-checks every value and returns a `JobConfig`;
unknown keys, wrong types, bad choices and out-of-range values raise `ConfigError` naming
the file, the dotted key, the value and the nearest valid key. Modules: `loader` (the
machinery), one per concept (`model`, `tokenizer`, `data`, `parallel`, `optimizer`,
`train`, `finetune`, `code`, `experts` for PanGu-Sigma), and `job` (the composition and the
cross-section `validate_job`).
"""
from pangu_ms.config.code import CodeConfig
from pangu_ms.config.data import DataConfig, SourceConfig
from pangu_ms.config.experts import DomainConfig, ExpertsConfig
from pangu_ms.config.finetune import FinetuneConfig
from pangu_ms.config.job import JobConfig, config_from_dict, load_config, validate_job
from pangu_ms.config.loader import apply_overrides, build_dataclass, parse_override, read_yaml
from pangu_ms.config.model import ModelConfig
from pangu_ms.config.optimizer import OptimizerConfig, ScheduleConfig
from pangu_ms.config.parallel import ParallelConfig, RecomputeConfig
from pangu_ms.config.tokenizer import TokenizerConfig
from pangu_ms.config.train import CheckpointConfig, RunConfig, TrainConfig

__all__ = ["CheckpointConfig", "CodeConfig", "DataConfig", "DomainConfig", "ExpertsConfig", "FinetuneConfig",
           "JobConfig", "ModelConfig", "OptimizerConfig", "ParallelConfig", "RecomputeConfig", "RunConfig",
           "ScheduleConfig", "SourceConfig", "TokenizerConfig", "TrainConfig", "apply_overrides", "build_dataclass",
           "config_from_dict", "load_config", "parse_override", "read_yaml", "validate_job"]
