"""Training checkpoints: atomic step directories, resume, and loading for inference.

Layout (BRIEF contract)::

    <run.output_dir>/checkpoints/step_00000100/
        model.ckpt      the train Cell: weights, AdamW moments and step, loss scale and its
                        counters (+ append_dict: step, data_step, tokens_seen); crc-checked
        meta.json       step, data position, tokens seen, loss, time, file names
        config.yaml     the resolved JobConfig
        tokenizer/      a copy of the tokenizer directory (vocab.model)

A step directory is written under a temporary name and renamed into place, so a crash
never leaves a half-written `step_*` directory; only the newest `keep_last` are kept.
Reading walks the step directories newest first and falls back past corrupt ones.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.config import JobConfig, config_from_dict
from pangu_ms.errors import CheckpointError

logger = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step_(\d{8})$")
WEIGHT_FILES = {"ckpt": "model.ckpt", "safetensors": "model.safetensors"}
LM_PREFIX = "lm."  # PanguAlphaWithLoss keeps the language model under `lm`


@dataclass
class CheckpointState:
    """What a resumed run needs besides the tensors."""

    path: Path
    """the step directory that was loaded."""
    step: int
    """optimizer steps completed."""
    data_step: int
    """micro-batches consumed per rank (the dataset's `start_step`)."""
    tokens_seen: int
    """training tokens consumed over all ranks."""
    meta: dict[str, Any]
    """the full meta.json."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_step_dirs(path: str | Path) -> list[Path]:
    """Step directories under a run dir, a checkpoints dir, or the step dir itself; newest first."""
    path = Path(path)
    if STEP_RE.match(path.name) and path.is_dir():
        return [path]
    for root in (path / "checkpoints", path):
        if root.is_dir():
            dirs = sorted((p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name)),
                          key=lambda p: int(STEP_RE.match(p.name).group(1)), reverse=True)
            if dirs:
                return dirs
    return []


def _weights_file(step_dir: Path) -> Path:
    for name in WEIGHT_FILES.values():
        if (step_dir / name).is_file():
            return step_dir / name
    raise CheckpointError(f"{step_dir}: no model.ckpt or model.safetensors (incomplete checkpoint)")


def read_meta(step_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((step_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{step_dir / 'meta.json'}: missing or unreadable ({exc})") from None


def read_tensors(step_dir: Path) -> dict:
    """All tensors of a step directory, crc-checked: name -> Parameter. Raises CheckpointError."""
    import mindspore as ms

    f = _weights_file(step_dir)
    fmt = "safetensors" if f.suffix == ".safetensors" else "ckpt"
    try:
        if fmt == "ckpt":
            return ms.load_checkpoint(str(f), crc_check=True)
        return ms.load_checkpoint(str(f), format="safetensors")
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{f}: truncated or corrupt checkpoint ({str(exc).splitlines()[0]}); "
                              "delete this step directory or resume from an older one") from None


def _copy_tokenizer(src: str | None, dst: Path) -> None:
    if src and Path(src).is_dir():
        shutil.copytree(src, dst)
    else:
        logger.warning("tokenizer directory %r not found: checkpoint saved without a tokenizer copy", src)


def save(run_dir: str | Path, cell, *, step: int, data_step: int, tokens_seen: int, job: JobConfig,
         extra_meta: dict[str, Any] | None = None) -> Path:
    """Write `checkpoints/step_<step>/` atomically and prune to `job.checkpoint.keep_last`.

    `cell` is the train Cell (`Trainer.cell`): saving it stores the weights together with
    the optimizer state and the loss scale.
    """
    import mindspore as ms

    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp_{step_dir_name(step)}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fmt = job.checkpoint.format
    append = {"step": step, "data_step": data_step, "tokens_seen": tokens_seen}
    weights = tmp / WEIGHT_FILES[fmt]
    if fmt == "ckpt":
        ms.save_checkpoint(cell, str(weights), append_dict=append, crc_check=True)
    else:
        ms.save_checkpoint(cell, str(weights), append_dict=append, format="safetensors")
    meta = {**append, "time": time.time(), "weights": weights.name, "format": fmt, **(extra_meta or {})}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    (tmp / "config.yaml").write_text(job.to_yaml(), encoding="utf-8")
    _copy_tokenizer(job.tokenizer.path, tmp / "tokenizer")
    if final.exists():  # re-saving a step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_step_dirs(root)[job.checkpoint.keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _load_step_dir(step_dir: Path, cell) -> CheckpointState:
    meta = read_meta(step_dir)
    tensors = read_tensors(step_dir)
    for key in ("step", "data_step", "tokens_seen"):
        if key not in tensors:
            raise CheckpointError(f"{step_dir}: checkpoint lacks '{key}' (not written by pangu_ms pretrain)")
    values = {k: int(tensors.pop(k).asnumpy()) for k in ("step", "data_step", "tokens_seen")}
    missing = _load_into(cell, tensors, step_dir)
    if missing:
        raise CheckpointError(f"{step_dir}: checkpoint does not fit this model/optimizer; missing "
                              f"{len(missing)} tensors, e.g. {missing[0]} (same config as the saved run?)")
    return CheckpointState(path=step_dir, meta=meta, **values)


def _load_into(cell, tensors: dict, step_dir: Path) -> list[str]:
    """load_param_into_net; a shape/dtype mismatch becomes a CheckpointError. Returns missing names."""
    import mindspore as ms

    try:
        missing, _ = ms.load_param_into_net(cell, tensors, strict_load=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{step_dir}: checkpoint does not fit this model/optimizer "
                              f"({str(exc).splitlines()[0]}); resume with the config it was saved with") from None
    return missing


def _newest_loadable(path: str | Path, load):
    """`load(step_dir)` on the newest step directory under `path` where it succeeds; corrupt or
    incomplete ones are skipped with a warning. CheckpointError if none loads."""
    dirs = list_step_dirs(path)
    if not dirs:
        raise CheckpointError(f"{path}: no checkpoints (expected checkpoints/step_XXXXXXXX/ directories)")
    errors = []
    for d in dirs:
        try:
            return load(d)
        except CheckpointError as exc:
            logger.warning("skipping checkpoint: %s", exc)
            errors.append(str(exc))
    raise CheckpointError(f"{path}: no loadable checkpoint; {'; '.join(errors)}")


def resume(path: str | Path, cell) -> CheckpointState:
    """Load the newest good checkpoint under `path` (a run dir, its checkpoints dir or one step
    dir) into the train Cell `cell`."""
    state = _newest_loadable(path, lambda d: _load_step_dir(d, cell))
    logger.info("resumed from %s (step %d)", state.path, state.step)
    return state


def newest_good(path: str | Path) -> tuple[Path, dict]:
    """The newest step directory under `path` whose tensors load: (dir, tensors)."""
    def load(d: Path) -> tuple[Path, dict]:
        read_meta(d)
        return d, read_tensors(d)

    return _newest_loadable(path, load)


def load_job_config(step_dir: Path) -> JobConfig:
    try:
        tree = yaml.safe_load((step_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{step_dir / 'config.yaml'}: missing or unreadable ({exc})") from None
    return config_from_dict(tree)


def load_for_inference(path: str | Path):
    """(JobConfig, PanguAlphaLM with weights loaded, PanguTokenizer) from a run dir, a
    checkpoints dir or one step dir (the newest good checkpoint wins)."""
    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    step_dir, tensors = newest_good(path)
    job = load_job_config(step_dir)
    weights = {k[len(LM_PREFIX):]: v for k, v in tensors.items() if k.startswith(LM_PREFIX)}
    model = PanguAlphaLM(job.model)
    missing = _load_into(model, weights, step_dir)
    if missing:
        raise CheckpointError(f"{step_dir}: weights do not fit model config {job.model}: missing {missing[:3]}")
    model.set_train(False)
    return job, model, _load_tokenizer(step_dir, job)


def _load_tokenizer(step_dir: Path, job: JobConfig):
    from pangu_ms.tokenizer import PanguTokenizer

    for d in (step_dir / "tokenizer", Path(job.tokenizer.path)):
        if (d / "vocab.model").is_file():
            return PanguTokenizer.from_dir(str(d))
    raise CheckpointError(f"{step_dir}: no tokenizer copy (tokenizer/vocab.model) and "
                          f"tokenizer.path={job.tokenizer.path!r} has none either")
