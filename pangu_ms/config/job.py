"""The whole job: every concept's section composed into `JobConfig`; loading and cross-checks.

YAML top-level keys are `JobConfig`'s fields (`model:`, `tokenizer:`, `data:`, `parallel:`,
`recompute:`, `optimizer:`, `schedule:`, `checkpoint:`, `train:`, `run:`, `finetune:`), each
mirroring its dataclass one to one. `validate_job` holds the checks that involve more than
one section.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.config.data import DataConfig
from pangu_ms.config.finetune import FinetuneConfig
from pangu_ms.config.loader import apply_overrides, build_dataclass, read_yaml
from pangu_ms.config.model import ModelConfig
from pangu_ms.config.optimizer import OptimizerConfig, ScheduleConfig
from pangu_ms.config.parallel import ParallelConfig, RecomputeConfig
from pangu_ms.config.tokenizer import TokenizerConfig
from pangu_ms.config.train import CheckpointConfig, RunConfig, TrainConfig
from pangu_ms.errors import ConfigError


@dataclass
class JobConfig:
    """A whole job: every concept's section. YAML top-level keys are these field names."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Load a job config from YAML (with base_config composition) and `--set` overrides."""
    tree: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    tree = apply_overrides(tree, overrides or [])
    try:
        return build_dataclass(JobConfig, tree)
    except ConfigError as exc:
        where = str(path) if path is not None else "<defaults>"
        if overrides:
            where += f" (with --set {' '.join(overrides)})"
        raise ConfigError(f"{where}: {exc}") from None


def config_from_dict(tree: dict[str, Any]) -> JobConfig:
    """Rebuild a JobConfig from `JobConfig.to_dict()` output (e.g. a checkpoint's copy).

    Checkpoints written before `finetune.length_bucket` (pad to a multiple of N) became
    `finetune.length_buckets` (a list of widths) carry the old key: it is read as the multiples
    of N up to `max_tokens`, the widths it meant."""
    ft = tree.get("finetune")
    if isinstance(ft, dict) and "length_bucket" in ft:
        ft = dict(ft)
        step, top = int(ft.pop("length_bucket")), int(ft.get("max_tokens", FinetuneConfig.max_tokens))
        ft.setdefault("length_buckets", list(range(step, top, step)) + [top])
        tree = {**tree, "finetune": ft}
    return build_dataclass(JobConfig, tree)
