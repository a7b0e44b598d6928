"""Typed job configuration: one dataclass per concept, composed into `JobConfig`.

YAML sections mirror the dataclasses one to one (`model:`, `tokenizer:`, `data:`,
`parallel:`, `recompute:`, `optimizer:`, `schedule:`, `checkpoint:`, `train:`, `run:`,
`finetune:`).
`base_config:` (a path or list of paths, relative to the file) composes files; later
values win. `--set section.field=value` overrides are parsed as YAML scalars and type
checked like file values. Unknown keys, wrong types and out-of-range values raise
`ConfigError` naming the file, the dotted key, the bad value and, for unknown keys, the
nearest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.errors import ConfigError


def _require(ok: bool, name: str, value: Any, hint: str) -> None:
    """Raise a `ConfigError` for field `name` unless `ok`."""
    if not ok:
        raise ConfigError(f"{name}={value!r}: {hint}")


# --------------------------------------------------------------------------- concepts


@dataclass
class ModelConfig:
    """PanGu-alpha shape and numerics (DESIGN.md: `num_layers` counts the query layer)."""

    vocab_size: int = 40000
    """rows of the (tied) word-embedding table."""
    seq_length: int = 1024
    """tokens per training row (the model sees `seq_length`, labels are shifted by one)."""
    num_layers: int = 32
    """transformer layers including the top query layer."""
    hidden_size: int = 2560
    """model width H."""
    ffn_hidden_size: int = 10240
    """feed-forward inner width (4H in the paper)."""
    num_heads: int = 32
    """attention heads N; head dim D = H / N."""
    dropout: float = 0.1
    """dropout on embeddings, attention probabilities and residual branches."""
    layernorm_eps: float = 1e-5
    """LayerNorm epsilon (computed in fp32)."""
    init_std: float = 0.02
    """standard deviation of Normal init; output projections are scaled by 1/sqrt(2*layers)."""
    compute_dtype: str = "float32"
    """matmul dtype: float32 (CPU default) or float16 (Ascend); LayerNorm/softmax/loss stay fp32."""
    eod_id: int = 8
    """end-of-document id (`<eod>` in the released vocabulary)."""
    pad_id: int = 6
    """padding id; labels equal to it are not scored."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_length", "num_layers", "hidden_size", "ffn_hidden_size", "num_heads"):
            _require(getattr(self, name) > 0, name, getattr(self, name), "must be a positive integer")
        _require(self.num_layers >= 2, "num_layers", self.num_layers,
                 "needs at least 2 (one block plus the top query layer)")
        _require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                 f"must be divisible by num_heads={self.num_heads}")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        _require(self.layernorm_eps > 0, "layernorm_eps", self.layernorm_eps, "must be > 0")
        _require(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        _require(self.compute_dtype in ("float32", "float16"), "compute_dtype", self.compute_dtype,
                 "use 'float32' or 'float16' (bfloat16 matmul does not run on CPU)")
        for name in ("eod_id", "pad_id"):
            v = getattr(self, name)
            _require(0 <= v < self.vocab_size, name, v, f"must be an id below vocab_size={self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class TokenizerConfig:
    """Where the SentencePiece model lives and how to train one."""

    path: str = "runs/tokenizer"
    """tokenizer directory holding `vocab.model` (trained or released)."""
    vocab_size: int = 40000
    """vocabulary size when training."""
    model_type: str = "unigram"
    """SentencePiece algorithm when training: unigram (as released) or bpe."""
    corpus: str = "peoples_daily_1998"
    """built-in corpus name or a path/glob of user text to train on; in `prepare`, `sources`
    means the cleaned training documents of every `data.sources` entry."""
    byte_fallback: bool = True
    """encode unseen characters as bytes instead of <unk> (models we train)."""
    character_coverage: float = 0.9995
    """share of characters covered by single-character pieces."""
    max_sentences: int = 2_000_000
    """cap on training sentences given to SentencePiece."""
    normalization: str = "nmt_nfkc"
    """SentencePiece normalisation when training: nmt_nfkc (as released; folds full-width forms) or identity."""

    def __post_init__(self) -> None:
        _require(self.vocab_size >= 16, "vocab_size", self.vocab_size, "must be at least 16 (10 reserved ids)")
        _require(self.model_type in ("unigram", "bpe"), "model_type", self.model_type, "use 'unigram' or 'bpe'")
        _require(0.9 <= self.character_coverage <= 1.0, "character_coverage", self.character_coverage,
                 "must be in [0.9, 1.0]")
        _require(self.max_sentences > 0, "max_sentences", self.max_sentences, "must be positive")
        _require(self.normalization in ("nmt_nfkc", "identity"), "normalization", self.normalization,
                 "use 'nmt_nfkc' (as released) or 'identity'")


@dataclass
class SourceConfig:
    """One corpus in the mix (the paper fixed a weight and an epoch count per source)."""

    name: str = "peoples_daily_1998"
    """built-in corpus name, or a path, directory or glob of .txt/.jsonl files."""
    weight: float = 1.0
    """relative share of training tokens from this source."""
    epochs: float = 1.0
    """upper bound on passes over this source."""
    text_field: str = "text"
    """field holding the text in .jsonl files."""

    def __post_init__(self) -> None:
        _require(self.weight > 0, "weight", self.weight, "must be > 0")
        _require(self.epochs > 0, "epochs", self.epochs, "must be > 0")


@dataclass
class DataConfig:
    """Cleaning, packing and the training input pipeline."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """corpora to mix."""
    output_dir: str = "runs/data"
    """where prepare writes MindRecord shards, the manifest and the cleaning report."""
    num_shards: int = 4
    """MindRecord files per split."""
    heldout_fraction: float = 0.01
    """share of documents kept apart for held-out loss."""
    min_chars: int = 20
    """documents shorter than this are dropped."""
    max_chars: int = 100_000
    """documents longer than this are split at paragraph boundaries."""
    min_cjk_ratio: float = 0.3
    """minimum share of CJK characters among non-space characters."""
    max_char_repeat: int = 10
    """a run of one character longer than this counts as noise and is squeezed."""
    dedup_exact: bool = True
    """drop documents whose normalised text hash was seen before."""
    near_dup_threshold: float = 0.8
    """MinHash Jaccard estimate at or above which a document is a near duplicate (1.0 disables)."""
    num_workers: int = 0
    """tokenizer worker processes (0: all cores)."""
    shuffle: bool = True
    """shuffle rows each epoch (seeded by run.seed)."""
    reset_at_eod: bool = True
    """restart position ids and block attention at every <eod>."""

    def __post_init__(self) -> None:
        _require(len(self.sources) > 0, "sources", self.sources, "list at least one corpus")
        _require(self.num_shards >= 1, "num_shards", self.num_shards, "must be >= 1")
        _require(0.0 <= self.heldout_fraction < 0.5, "heldout_fraction", self.heldout_fraction, "must be in [0, 0.5)")
        _require(self.min_chars >= 1, "min_chars", self.min_chars, "must be >= 1")
        _require(self.max_chars > self.min_chars, "max_chars", self.max_chars, f"must exceed min_chars={self.min_chars}")
        _require(0.0 <= self.min_cjk_ratio <= 1.0, "min_cjk_ratio", self.min_cjk_ratio, "must be in [0, 1]")
        _require(self.max_char_repeat >= 2, "max_char_repeat", self.max_char_repeat, "must be >= 2")
        _require(0.0 < self.near_dup_threshold <= 1.0, "near_dup_threshold", self.near_dup_threshold,
                 "must be in (0, 1]")
        _require(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")


@dataclass
class ParallelConfig:
    """Device mesh and distributed-training switches (dp data, mp model, pp pipeline)."""

    dp: int = 1
    """data-parallel degree."""
    mp: int = 1
    """op-level model-parallel degree."""
    pp: int = 1
    """pipeline stages."""
    ep: int = 1
    """expert-parallel degree (reserved for PanGu-Sigma)."""
    micro_batches: int = 1
    """micro-batches per step when pipelining."""
    vocab_emb_dp: bool = True
    """replicate the word embedding over mp (False: split it over the vocabulary)."""
    optimizer_shard: bool = False
    """shard optimizer state over the data-parallel group (Ascend only)."""
    grad_agg_group_mb: int = 0
    """gradient all-reduce fusion bucket size in MB (0: framework default)."""
    grad_agg_layers: int = 4
    """consecutive layers whose gradient all-reduces share one fusion group (0: framework default)."""

    def __post_init__(self) -> None:
        for name in ("dp", "mp", "pp", "ep", "micro_batches"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _require(self.grad_agg_group_mb >= 0, "grad_agg_group_mb", self.grad_agg_group_mb, "must be >= 0")
        _require(self.grad_agg_layers >= 0, "grad_agg_layers", self.grad_agg_layers, "must be >= 0")

    @property
    def devices(self) -> int:
        return self.dp * self.mp * self.pp


@dataclass
class RecomputeConfig:
    """Activation rematerialisation."""

    mode: str = "none"
    """none, full (every layer) or selective (attention core only)."""

    def __post_init__(self) -> None:
        _require(self.mode in ("none", "full", "selective"), "mode", self.mode, "use none, full or selective")


@dataclass
class OptimizerConfig:
    """AdamW, loss scaling and clipping (paper: betas 0.9/0.95, eps 1e-8, wd 0.1)."""

    lr: float = 1e-4
    """peak learning rate."""
    min_lr: float = 1e-6
    """learning rate at the end of the cosine decay."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """decoupled weight decay; not applied to LayerNorm parameters and biases."""
    clip_norm: float = 1.0
    """global gradient-norm clip (0 disables)."""
    loss_scale: float = 2.0 ** 32
    """initial dynamic loss scale."""
    loss_scale_factor: float = 2.0
    """factor the scale is divided by on overflow and multiplied by after a clean window."""
    loss_scale_window: int = 1000
    """clean steps before the scale grows."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, "lr", self.lr, "must be > 0")
        _require(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        for name in ("beta1", "beta2"):
            _require(0.0 <= getattr(self, name) < 1.0, name, getattr(self, name), "must be in [0, 1)")
        _require(self.eps > 0, "eps", self.eps, "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(self.clip_norm >= 0, "clip_norm", self.clip_norm, "must be >= 0 (0 disables)")
        _require(self.loss_scale >= 1, "loss_scale", self.loss_scale, "must be >= 1")
        _require(self.loss_scale_factor > 1, "loss_scale_factor", self.loss_scale_factor, "must be > 1")
        _require(self.loss_scale_window >= 1, "loss_scale_window", self.loss_scale_window, "must be >= 1")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup then cosine decay to `optimizer.min_lr`."""

    warmup_steps: int = 2000
    """steps of linear warmup from 0 to the peak lr."""
    decay_steps: int = 0
    """steps of cosine decay after warmup (0: until train.steps)."""
    kind: str = "cosine"
    """decay shape after warmup: cosine or constant."""

    def __post_init__(self) -> None:
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        _require(self.decay_steps >= 0, "decay_steps", self.decay_steps, "must be >= 0")
        _require(self.kind in ("cosine", "constant"), "kind", self.kind, "use cosine or constant")


@dataclass
class CheckpointConfig:
    """What is saved, how often, and how many are kept."""

    every_steps: int = 1000
    """save every this many optimizer steps (and at the end)."""
    keep_last: int = 3
    """checkpoints kept; older ones are deleted after a successful save."""
    format: str = "ckpt"
    """ckpt or safetensors."""

    def __post_init__(self) -> None:
        _require(self.every_steps >= 1, "every_steps", self.every_steps, "must be >= 1")
        _require(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")
        _require(self.format in ("ckpt", "safetensors"), "format", self.format, "use ckpt or safetensors")


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    """optimizer steps to run."""
    global_batch_size: int = 8
    """rows per optimizer step over all data-parallel ranks and accumulation steps."""
    grad_accum_steps: int = 1
    """micro-steps whose gradients are summed before one optimizer step."""
    eval_every: int = 200
    """held-out loss every this many steps (0 disables)."""
    eval_batches: int = 8
    """held-out batches per evaluation."""
    log_every: int = 10
    """metrics log line every this many steps."""

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        _require(self.global_batch_size >= 1, "global_batch_size", self.global_batch_size, "must be >= 1")
        _require(self.grad_accum_steps >= 1, "grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        _require(self.global_batch_size % self.grad_accum_steps == 0, "global_batch_size",
                 self.global_batch_size, f"must be divisible by grad_accum_steps={self.grad_accum_steps}")
        _require(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        _require(self.eval_batches >= 1, "eval_batches", self.eval_batches, "must be >= 1")
        _require(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")


@dataclass
class RunConfig:
    """Where a run writes and how MindSpore executes it."""

    name: str = "pangu_alpha"
    """run name, used in log lines."""
    output_dir: str = "runs/pretrain"
    """checkpoints, metrics, plots and the resolved config go here."""
    seed: int = 1234
    """seed for init, shuffling and dropout."""
    device: str = "CPU"
    """CPU or Ascend."""
    mode: str = "graph"
    """graph (GRAPH_MODE) or pynative."""

    def __post_init__(self) -> None:
        _require(self.device in ("CPU", "Ascend"), "device", self.device, "use CPU or Ascend")
        _require(self.mode in ("graph", "pynative"), "mode", self.mode, "use graph or pynative")


@dataclass
class FinetuneConfig:
    """Fine-tuning a pretrained checkpoint on a classification task (`finetune` command)."""

    init: str = "runs/tiny/pretrain"
    """checkpoint to start from: a run dir, its checkpoints/ dir or one step dir."""
    task: str = "sentiment"
    """task name or YAML path (ascend_configs/tasks); trains on its demo_split, evaluates its split."""
    method: str = "full"
    """full (every weight) or lora (low-rank adapters on the attention projections)."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / r) x A B."""
    steps: int = 300
    """optimizer steps (the lr schedule comes from the optimizer/schedule sections)."""
    batch_size: int = 16
    """examples per step."""
    max_tokens: int = 96
    """tokens per training example (prompt cut from the left, label kept)."""
    length_buckets: list[int] = field(default_factory=lambda: [32, 64])
    """training row widths: each row is padded to the smallest that holds it (one compiled graph
    per width; max_tokens is always the widest, larger entries are dropped)."""
    lm_loss_weight: float = 0.5
    """weight of the auxiliary next-token loss on the prompt text (GPT fine-tuning); 0 turns it off."""
    lm_positions: int = 48
    """prompt positions sampled per example for that auxiliary loss."""
    dropout: float = 0.1
    """dropout while fine-tuning (hidden states and attention probabilities); the saved model's
    config keeps the pretrained value."""
    ema_decay: float = 0.995
    """per-step decay of the exponential moving average of the weights that is evaluated and
    saved instead of the last step's weights (averages out the step-to-step noise); 0: off."""
    train_examples: int = 0
    """use at most this many training examples (0: all)."""
    eval_limit: int = 0
    """test examples evaluated before and after (0: the whole split)."""
    eval_shots: int = 4
    """K of the few-shot evaluation before fine-tuning (0 skips it)."""

    def __post_init__(self) -> None:
        _require(self.method in ("full", "lora"), "method", self.method, "use full or lora")
        _require(self.lora_rank >= 1, "lora_rank", self.lora_rank, "must be >= 1")
        _require(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "must be > 0")
        _require(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1) (0 turns the average off)")
        _require(self.lm_loss_weight >= 0, "lm_loss_weight", self.lm_loss_weight, "must be >= 0 (0 turns it off)")
        _require(bool(self.length_buckets) and all(b >= 1 for b in self.length_buckets)
                 and self.length_buckets == sorted(set(self.length_buckets)), "length_buckets",
                 self.length_buckets, "give increasing widths >= 1, e.g. [32, 64, 96, 128]")
        for name in ("steps", "batch_size", "max_tokens", "lm_positions"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("train_examples", "eval_limit", "eval_shots"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")


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


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` and convert it; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping of {tp.__name__} fields")
        return build_dataclass(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r}: expected a string")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def build_dataclass(cls: type, values: dict[str, Any], *, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            near = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean '{(prefix + '.') if prefix else ''}{near[0]}'?" if near else ""
            raise ConfigError(f"unknown key '{key}'{hint} (valid: {', '.join(names)})")
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{exc}") from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file, resolving `base_config:` (relative to the file) first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: base_config cycle through {' -> '.join(str(p) for p in seen)}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("base_config", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / b, seen + (path,)))
    return _deep_merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.field=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value, e.g. --set parallel.mp=8")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: the key needs a section, e.g. train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides to a raw config mapping (validated later with the rest)."""
    tree = dict(tree)
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for p in parts[:-1]:
            nxt = node.get(p)
            nxt = dict(nxt) if isinstance(nxt, dict) else {}
            node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Load a job config from YAML (with base_config composition) and `--set` overrides."""
    tree: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
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
