"""The whole job: every concept's section composed into `JobConfig`; loading and cross-checks.

YAML top-level keys are `JobConfig`'s fields (`model:`, `tokenizer:`, `data:`, `parallel:`,
`recompute:`, `optimizer:`, `schedule:`, `checkpoint:`, `train:`, `run:`, `finetune:`, `code:`, and
for PanGu-Sigma `experts:`), each mirroring its dataclass one to one. `validate_job` holds the checks
that involve more than one section.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.config.code import CodeConfig
from pangu_ms.config.data import DataConfig
from pangu_ms.config.experts import ExpertsConfig
from pangu_ms.config.finetune import FinetuneConfig
from pangu_ms.config.loader import apply_overrides, build_dataclass, read_yaml, show
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
    code: CodeConfig = field(default_factory=CodeConfig)
    experts: ExpertsConfig | None = None
    """PanGu-Sigma's sparse layers; None (no `experts:` section): the dense PanGu-alpha."""

    @property
    def family(self) -> str:
        """The model family: 'pangu_sigma' with an `experts:` section, else 'pangu_alpha'."""
        return "pangu_alpha" if self.experts is None else "pangu_sigma"

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
            where += f" (with --set {' '.join(o if o.isprintable() else show(o) for o in overrides)})"
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


COMMANDS_CHECKED = ("prepare", "pretrain", "finetune")


def validate_job(job: JobConfig, command: str) -> None:
    """The checks between sections that `command` relies on; raises one `ConfigError` listing all.

    Checks that also need the device count (dp*mp*pp against the devices launched, heads and
    vocabulary against mp, ...) are `pangu_ms.parallel.validate`'s; this function needs only
    the config. Per command:
    - prepare: a tokenizer trained here has at most model.vocab_size pieces;
    - pretrain: the global batch splits into dp * micro_batches * grad_accum_steps parts;
    - finetune: its rows fit the model (finetune.max_tokens <= model.seq_length);
    - prepare, pretrain of PanGu-Sigma: every data source names one of the experts' domains.
    - pretrain, finetune: bf16 compute only where it runs (Ascend 910B; MindSpore's CPU
      backend has no bf16 matmul, 910A no bf16 at all).
    """
    if command not in COMMANDS_CHECKED:
        raise ValueError(f"validate_job: command {command!r} is not one of {COMMANDS_CHECKED}")
    m, p, t = job.model, job.parallel, job.train
    problems = []
    if command == "prepare" and job.tokenizer.vocab_size > m.vocab_size:
        problems.append(f"tokenizer.vocab_size={job.tokenizer.vocab_size} exceeds model.vocab_size={m.vocab_size}: "
                        "the model could not embed every id of the tokenizer prepare would train; make them equal")
    unit = p.dp * p.micro_batches * t.grad_accum_steps
    if command == "pretrain" and t.global_batch_size % unit:
        problems.append(f"train.global_batch_size={t.global_batch_size} is not divisible by parallel.dp*micro_batches*"
                        f"train.grad_accum_steps = {p.dp}*{p.micro_batches}*{t.grad_accum_steps} = {unit}: use a "
                        f"multiple of {unit}")
    if command in ("prepare", "pretrain") and job.experts is not None:
        known = job.experts.domain_names
        for i, src in enumerate(job.data.sources):
            if src.domain not in known:
                problems.append(f"data.sources[{i}] ({src.name}): domain={src.domain!r} is not one of experts.domains "
                                f"({', '.join(known)}); a PanGu-Sigma job names each source's domain")
    if command == "finetune" and job.finetune.max_tokens > m.seq_length:
        problems.append(f"finetune.max_tokens={job.finetune.max_tokens} exceeds model.seq_length={m.seq_length}: "
                        f"lower finetune.max_tokens to at most {m.seq_length}")
    if command in ("pretrain", "finetune") and m.compute_dtype == "bfloat16" and (
            job.run.device != "Ascend" or job.run.ascend_chip == "910A"):
        where = "the CPU backend has no bf16 matmul" if job.run.device != "Ascend" else "910A has no bf16"
        problems.append(f"model.compute_dtype=bfloat16 with run.device={job.run.device} run.ascend_chip="
                        f"{job.run.ascend_chip}: {where}; use float32 on CPU, float16 on 910A")
    if problems:
        raise ConfigError("; ".join(problems) if len(problems) == 1 else
                          "the config's sections disagree:\n" + "\n".join(f"  - {x}" for x in problems))
