"""Evaluation tasks described in YAML (`ascend_configs/tasks/<name>.yaml`).

A task file::

    name: sentiment
    type: classification          # classification | generation | perplexity
    dataset: shopping_reviews     # built-in dataset, or a JSONL path (relative to the YAML)
    split: test                   # evaluated split
    demo_split: train             # where few-shot demonstrations come from
    template: "评论：{text}\\n评价：{label}"   # {label} last: the scored continuation
    labels: {"1": "好", "0": "差"}   # classification: label key -> label words
    shots: 0                      # default K (override with --shots)

`--task NAME` looks for `ascend_configs/tasks/NAME.yaml`; a path to a YAML file works too.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


from pangu_ms.config import build_dataclass
from pangu_ms.config.loader import check_choices, read_mapping
from pangu_ms.errors import ConfigError

TASK_PACKAGE = "pangu_ms.ascend_configs"  # the repository's ascend_configs/, carried by the wheel


def task_dir() -> Path:
    """The built-in tasks (`ascend_configs/tasks/`), found through the package, not the checkout."""
    return Path(str(importlib.resources.files(TASK_PACKAGE).joinpath("tasks")))
TYPES = ("classification", "generation", "perplexity", "humaneval")


@dataclass
class TaskConfig:
    """One evaluation task: data, prompt template, label words, decoding settings."""

    name: str = ""
    """task name (reports use it)."""
    type: str = "classification"
    """classification (perplexity of each label), generation (decode, score text), perplexity, or
    humaneval (decode code completions, run them in the sandbox, pass@k; `pangu_ms.eval.humaneval`)."""
    dataset: str = "shopping_reviews"
    """built-in dataset, JSONL file, or for perplexity a text/JSONL corpus or 'heldout' (prepared split)."""
    split: str = "test"
    """evaluated split of a built-in dataset."""
    demo_split: str = "train"
    """split the few-shot demonstrations are drawn from."""
    template: str = "{text}{label}"
    """prompt; {text} is the input, {label} (last) the label words or target text."""
    labels: dict[str, str] | None = None
    """classification: label key (as in the data) -> label words (set by `load_task`)."""
    text_field: str = "text"
    """JSONL field holding the input."""
    label_field: str = "label"
    """JSONL field holding the label key or target text."""
    shots: int = 0
    """default number of demonstrations."""
    demo_separator: str = "\n"
    """text between demonstrations and before the query."""
    max_text_chars: int = 150
    """inputs are cut to this many characters (keeps few-shot prompts inside seq_length)."""
    limit: int = 0
    """evaluate at most this many examples (0: all)."""
    max_new_tokens: int = 32
    """generation: tokens decoded per example (greedy)."""
    seed: int = 0
    """seed of the demonstration draw (humaneval: of the sampling)."""
    samples: int = 1
    """humaneval: completions per problem (n of pass@k)."""
    temperature: float = 0.0
    """humaneval: sampling temperature (0: greedy, which needs samples: 1)."""
    top_p: float = 1.0
    """humaneval: nucleus sampling mass."""
    prompt_format: Literal['raw', 'tagged'] = "raw"
    """humaneval: raw (the prompt as written) or tagged (`<comments> docstring <python> code`)."""
    timeout: float = 5.0
    """humaneval: wall seconds for the test's calls of one completion."""
    workers: int = 0
    """humaneval: checker processes in parallel (0: all cores)."""
    isolation: Literal['auto', 'namespaces', 'userns', 'none'] = "auto"
    """humaneval: sandbox isolation, auto (the strongest that works here), namespaces, userns or none."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for an unusable task (also after `labels` is set)."""
        if self.type not in TYPES:
            raise ConfigError(f"type={self.type!r}: use one of {', '.join(TYPES)}")
        if self.type == "humaneval":
            self._validate_humaneval()
        elif self.type != "perplexity":
            if "{text}" not in self.template or not self.template.rstrip().endswith("{label}"):
                raise ConfigError(f"template={self.template!r}: needs {{text}} and must end with {{label}}")
        if self.type == "classification" and self.labels is not None and len(self.labels) < 2:
            raise ConfigError(f"labels={self.labels!r}: a classification task needs at least two label words")
        for name in ("shots", "limit", "max_text_chars", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0")

    def _validate_humaneval(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"samples={self.samples}: must be >= 1")
        if self.temperature < 0 or (self.temperature == 0 and self.samples > 1):
            raise ConfigError(f"temperature={self.temperature} with samples={self.samples}: greedy decoding (0) gives "
                              "one completion; use samples: 1, or a temperature > 0 to sample several")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p}: must be in (0, 1]")
        check_choices(self)
        if self.timeout <= 0 or self.workers < 0:
            raise ConfigError(f"timeout={self.timeout}, workers={self.workers}: need timeout > 0 and workers >= 0")

    def render(self, text: str, label_text: str = "") -> tuple[str, str]:
        """(prompt up to {label}, label_text + whatever follows {label}) for one example."""
        text = text[: self.max_text_chars] if self.max_text_chars else text
        head, tail = self.template.split("{label}", 1)
        return head.replace("{text}", text), label_text + tail


def load_task(spec: str) -> TaskConfig:
    """A task by name (ascend_configs/tasks/NAME.yaml) or by path to a YAML file."""
    path = Path(spec)
    if not path.is_file():
        path = task_dir() / f"{spec}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in task_dir().glob("*.yaml"))
        raise ConfigError(f"task {spec!r}: no such YAML file and not a built-in task ({', '.join(names)})")
    raw = read_mapping(path, "task fields")
    labels = raw.pop("labels", {})  # build_dataclass has no dict fields: checked here
    if not isinstance(labels, dict) or not all(isinstance(v, (str, int)) for v in labels.values()):
        raise ConfigError(f"{path}: labels must map label keys to label words, got {labels!r}")
    raw.setdefault("name", path.stem)
    ds = raw.get("dataset")
    if isinstance(ds, str) and ds.endswith((".jsonl", ".txt")) and not Path(ds).is_absolute():
        raw["dataset"] = str(path.parent / ds)
    try:
        task = build_dataclass(TaskConfig, raw)
        task.labels = {str(k): str(v) for k, v in labels.items()}
        task.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return task


def task_to_dict(task: TaskConfig) -> dict:
    return dataclasses.asdict(task)
