"""Loading a checkpoint's model for generate / eval / finetune, whatever layout wrote it.

The newest step whose manifest, sizes and checksums all hold is used (older ones are the
fallback, each skip logged). Model weights (`lm.*`) are assembled from the rank files with the
same slice math as `checkpoint merge`, so a checkpoint of any mesh loads on one CPU process;
the optimizer state is not read.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pangu_ms.checkpoint import store
from pangu_ms.checkpoint.reshard import assemble, open_step
from pangu_ms.checkpoint.training import LM_PREFIX, load_into, load_job_config
from pangu_ms.errors import CheckpointError

logger = logging.getLogger(__name__)


def newest_complete(path: str | Path) -> Path:
    """The newest step directory under `path` that is complete, checksums verified on every rank."""
    dirs = store.list_step_dirs(path)
    if not dirs:
        raise CheckpointError(f"{path}: no checkpoints (expected checkpoints/step_XXXXXXXX/ directories)")
    problems = []
    for d in dirs:
        status = store.check_step(d, verify_ranks=[-1])
        if status.complete:
            return d
        logger.warning("skipping checkpoint %s: %s", d, "; ".join(status.problems))
        problems.append(f"{d.name}: {'; '.join(status.problems)}")
    raise CheckpointError(f"{path}: no complete checkpoint; {' | '.join(problems)}")


def model_weights(step_dir: Path) -> dict[str, np.ndarray]:
    """Full `lm.*` tensors of one complete step (prefix kept)."""
    source, _ = open_step(step_dir)
    try:
        return {n: assemble(source, n) for n in source.layout.tensors if n.startswith(LM_PREFIX)}
    finally:
        source.close()


def load_for_inference(path: str | Path):
    """(JobConfig, PanguAlphaLM with weights loaded, PanguTokenizer) from a run dir, a
    checkpoints dir or one step dir (the newest complete checkpoint wins)."""
    import mindspore as ms

    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    step_dir = newest_complete(path)
    job = load_job_config(step_dir)
    weights = {k[len(LM_PREFIX):]: ms.Parameter(ms.Tensor(v), name=k[len(LM_PREFIX):])
               for k, v in model_weights(step_dir).items()}
    model = PanguAlphaLM(job.model)
    missing = load_into(model, weights, step_dir)
    if missing:
        raise CheckpointError(f"{step_dir}: weights do not fit model config {job.model}: missing {missing[:3]}")
    model.set_train(False)
    return job, model, load_tokenizer(step_dir, job)


def init_weights(network, path: str | Path, job) -> Path:
    """Load the model weights (`lm.*`) of the newest complete checkpoint under `path` into the loss
    network `network` (`train.init_from`: PanGu-Coder's stage 2 from stage 1); returns the step dir.

    The checkpoint's tokenizer must be the one `job`'s prepared data was tokenized with (same
    sha256), and its weights must fit `job.model`; either mismatch is a CheckpointError.
    """
    import mindspore as ms

    from pangu_ms.data.shards import read_manifest
    from pangu_ms.tokenizer import MODEL_FILE, file_sha256

    step_dir = newest_complete(path)
    want = read_manifest(job.data.output_dir).get("tokenizer", {}).get("sha256")
    copy = step_dir / store.TOKENIZER / MODEL_FILE
    if want and copy.is_file() and file_sha256(copy) != want:
        raise CheckpointError(f"train.init_from={path}: {step_dir} was trained with another tokenizer than "
                              f"{job.data.output_dir} was prepared with (sha256 {file_sha256(copy)[:12]} vs "
                              f"{want[:12]}); prepare the data with the checkpoint's tokenizer")
    weights = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in model_weights(step_dir).items()}
    ours = {p.name for p in network.get_parameters() if p.name.startswith(LM_PREFIX)}
    if set(weights) != ours:
        raise CheckpointError(f"train.init_from={path}: {step_dir} does not hold this model's weights (missing "
                              f"{sorted(ours - set(weights))[:3]}, extra {sorted(set(weights) - ours)[:3]}); is it "
                              "the same model family, with the model: of this job?")
    load_into(network, weights, step_dir)
    logger.info("initialised %d weights from %s", len(weights), step_dir)
    return step_dir


def load_tokenizer(step_dir: Path, job):
    """The checkpoint's tokenizer copy (else `tokenizer.path`), of the kind its tokenizer.json records
    (a PanGu-Coder checkpoint carries its code tokenizer)."""
    from pangu_ms.tokenizer import load_tokenizer as load_dir

    for d in (step_dir / store.TOKENIZER, Path(job.tokenizer.path)):
        if (d / "vocab.model").is_file():
            return load_dir(str(d))
    raise CheckpointError(f"{step_dir}: no tokenizer copy (tokenizer/vocab.model) and "
                          f"tokenizer.path={job.tokenizer.path!r} has none either")
