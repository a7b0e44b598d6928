"""The pretraining loop: data, model, optimizer, train step, evaluation, checkpoints, outputs.

`pretrain(job)` runs `job.train.steps` optimizer steps (each of `grad_accum_steps`
micro-batches per data-parallel rank) and returns the summary dict. Under msrun each rank
reads its own shard of the training rows (`num_shards=dp, shard_id=dp_rank`); MindRecord
interleaves shards, so the union of the ranks' step-t batches is the single-process
step-t batch of the same global size. Rank 0 writes metrics, plot and summary; every rank writes
its own slices of each checkpoint (`pangu_ms.checkpoint.training.Checkpointer`).
"""
from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pangu_ms.config import JobConfig, validate_job
from pangu_ms.errors import ConfigError, DataError
from pangu_ms.runtime import setup_context
from pangu_ms.train import checkpoint as ckpt
from pangu_ms.train.metrics import MetricsLog, plot_loss, summary_text, unigram_entropy
from pangu_ms.train.optimizer import build_optimizer, lr_at

logger = logging.getLogger(__name__)


@dataclass
class _Position:
    step: int = 0
    """optimizer steps done."""
    data_step: int = 0
    """micro-batches consumed on this rank."""
    tokens_seen: int = 0
    """training tokens consumed over all ranks."""


def micro_batch_size(job: JobConfig, dp_size: int) -> int:
    """Rows per rank per micro-step: global batch / (dp * accumulation steps)."""
    parts = dp_size * job.train.grad_accum_steps
    if job.train.global_batch_size % parts:
        raise ConfigError(f"train.global_batch_size={job.train.global_batch_size} is not divisible by "
                          f"data-parallel size {dp_size} x train.grad_accum_steps={job.train.grad_accum_steps}")
    return job.train.global_batch_size // parts


def _batches(dataset, epochs: int) -> Iterator[tuple]:
    it = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=False)
    while True:
        yielded = False
        for batch in it:
            yielded = True
            yield tuple(batch)
        if not yielded:
            raise RuntimeError("training dataset produced no batch")


def token_counts(files: list[str], vocab_size: int) -> np.ndarray:
    """Token frequencies over every row of a split's shards ([V] int64)."""
    import mindspore.dataset as ds

    counts = np.zeros(vocab_size, np.int64)
    data = ds.MindDataset(files, columns_list=["input_ids"], shuffle=False)
    for (row,) in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
        counts += np.bincount(row.reshape(-1), minlength=vocab_size)[:vocab_size]
    return counts


def uses_loss_mask(job: JobConfig) -> bool:
    """True when prepare wrote a `loss_mask` column (PanGu-Coder stage 2): every batch then carries
    the mask and the loss counts only the flagged labels (`PanguAlphaWithMaskedLoss`)."""
    from pangu_ms.data.shards import LOSS_MASK_COLUMN, read_manifest

    return LOSS_MASK_COLUMN in read_manifest(job.data.output_dir).get("columns", [])


class _Evaluator:
    """Mean held-out loss over the first `eval_batches` held-out batches (fixed, cached)."""

    def __init__(self, network, files: list[str], job: JobConfig, batch_size: int, loss_mask: bool):
        from pangu_ms.data.dataset import build_dataset

        self.network = network
        data = build_dataset(files, seq_length=job.model.seq_length, batch_size=batch_size,
                             eod_id=job.model.eod_id, reset_at_eod=job.data.reset_at_eod, shuffle=False,
                             drop_remainder=True, loss_mask=loss_mask, domains=job.experts is not None)
        it = data.create_tuple_iterator(num_epochs=1, output_numpy=False)
        self.batches = [tuple(b) for _, b in zip(range(job.train.eval_batches), it)]

    def __call__(self) -> float:
        self.network.set_train(False)
        losses = [float(self.network(*b).asnumpy()) for b in self.batches]
        self.network.set_train(True)
        return float(np.mean(losses))



def weights_digest(network) -> str:
    """crc32 over all trainable weights (equal digests: bitwise equal weights)."""
    crc = 0
    for p in sorted(network.trainable_params(), key=lambda p: p.name):
        crc = zlib.crc32(p.asnumpy().tobytes(), crc)
    return f"{crc:08x}"


def pretrain(job: JobConfig, *, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train `job` and return the summary (also written to `<output_dir>/summary.json`)."""
    import mindspore as ms

    from pangu_ms.data.shards import shard_files
    from pangu_ms.parallel.context import init_parallel

    t_start = time.time()
    validate_job(job, "pretrain")
    setup_context(job.run)
    info = init_parallel(job)
    ms.set_seed(job.run.seed)
    run_dir = Path(job.run.output_dir)
    is_main = info.rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(job.to_yaml(), encoding="utf-8")
    train_files = shard_files(job.data.output_dir, "train")
    masked = uses_loss_mask(job)
    net, trainer, sharding = _build_trainer(job, info, masked)
    pos = _Position()
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=is_main)
    checkpointer = ckpt.Checkpointer(run_dir, trainer.cell, job, info)
    if resume:
        if info.mode == "semi_auto_parallel":  # parameters hold their slices only once compiled
            ckpt.compile_for_slices(trainer.cell, job, sharding["batch_size"])
        state = checkpointer.resume(resume)
        _check_same_data_layout(state.meta, sharding, trainer.accum_steps)
        pos = _Position(state.step, state.data_step, state.tokens_seen)
        log.write("resume", step=pos.step, path=str(state.path))
    elif job.train.init_from:
        src = ckpt.init_weights(net, job.train.init_from, job)
        log.write("init", path=str(src), weights_crc32=weights_digest(net))
    batches = _train_batches(job, train_files, trainer.accum_steps, pos.data_step, loss_mask=masked, **sharding)
    evaluator = None
    if job.train.eval_every > 0 and job.data.heldout_fraction > 0:
        # every rank evaluates the same batches of the single-process micro-batch size, so the
        # held-out loss does not depend on the data-parallel degree
        eval_batch = job.train.global_batch_size // job.train.grad_accum_steps
        try:
            evaluator = _Evaluator(net, shard_files(job.data.output_dir, "heldout"), job, eval_batch, masked)
        except DataError as exc:  # e.g. fewer held-out rows than one batch: train without it
            logger.warning("no held-out evaluation: %s", exc)
    meta = _data_layout(sharding, trainer.accum_steps)
    result = _run(job, trainer, batches, evaluator, pos, log, checkpointer, is_main, progress, meta)
    result["setup_s"] = result.pop("t_loop_start") - t_start
    return _finish(job, result, net, train_files, run_dir, info, t_start)


def _data_layout(sharding: dict[str, int], accum: int) -> dict[str, int]:
    return {"micro_batch": sharding["batch_size"], "data_shards": sharding["num_shards"], "accum_steps": accum}


def _check_same_data_layout(meta: dict[str, Any], sharding: dict[str, int], accum: int) -> None:
    """The saved data position counts micro-batches of one layout; resuming needs the same."""
    now = _data_layout(sharding, accum)
    saved = {k: meta[k] for k in now if k in meta}
    if saved and saved != now:
        raise ConfigError(f"checkpoint was written with data layout {saved} but this run uses {now}: resume with "
                          "the same train.global_batch_size, train.grad_accum_steps and number of workers")


def _build_trainer(job: JobConfig, info, masked: bool) -> tuple[Any, Any, dict[str, int]]:
    """(loss network, trainer, dataset sharding) for the parallel mode in use; `masked`: the data
    carries a loss mask (`uses_loss_mask`)."""
    from pangu_ms.kernels.switch import job_kernel_spec
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, PanguAlphaWithMaskedLoss
    from pangu_ms.parallel import parallelize_job
    from pangu_ms.train.step import Trainer

    if info.mode == "semi_auto_parallel":  # built without weights; each data-parallel rank reads 1/dp
        from pangu_ms.train.ascend import build_ascend_trainer, data_sharding

        net, trainer = build_ascend_trainer(job, info, masked=masked)
        return net, trainer, data_sharding(job, info)
    if job.experts is not None:  # PanGu-Sigma: one CPU process (its plan is Ascend-only and not run)
        from pangu_ms.train.sigma import build_sigma_trainer

        if info.world_size != 1:
            raise ConfigError("PanGu-Sigma trains on one CPU process here; run it without msrun")
        if masked:
            raise ConfigError(f"{job.data.output_dir} holds loss-masked rows (code.stage=code_clm), which "
                              "PanGu-Sigma's trainer does not take: prepare the data with code.stage: clm")
        net, trainer = build_sigma_trainer(job)
        return net, trainer, dict(batch_size=micro_batch_size(job, 1), num_shards=1, shard_id=0)
    net = parallelize_job((PanguAlphaWithMaskedLoss if masked else PanguAlphaWithLoss)(job.model, job_kernel_spec(job)),
                          job, info)
    optimizer = build_optimizer(net.trainable_params(), job.optimizer, job.schedule, job.train.steps)
    trainer = Trainer(net, optimizer, job.optimizer, accum_steps=job.train.grad_accum_steps)
    return net, trainer, dict(batch_size=micro_batch_size(job, info.dp_size), num_shards=info.dp_size,
                              shard_id=info.dp_rank)


def _train_batches(job: JobConfig, files: list[str], accum: int, start_step: int, *, batch_size: int,
                   num_shards: int, shard_id: int, loss_mask: bool) -> Iterator[tuple]:
    """Endless (input_ids, position_id, document_id[, loss_mask][, domain_id]) micro-batches from `start_step` on."""
    from pangu_ms.data.dataset import build_dataset

    dataset = build_dataset(files, seq_length=job.model.seq_length, batch_size=batch_size, eod_id=job.model.eod_id,
                            reset_at_eod=job.data.reset_at_eod, shuffle=job.data.shuffle, seed=job.run.seed,
                            num_shards=num_shards, shard_id=shard_id, start_step=start_step,
                            loss_mask=loss_mask, domains=job.experts is not None)
    per_epoch = dataset.get_dataset_size()
    # set_init_step(k) makes the iterator yield only the epochs from k's epoch on
    epochs = math.ceil(job.train.steps * accum / per_epoch) + 1
    logger.info("training %d steps from micro-batch %d: %d x %d rows per rank per step, shard %d/%d, "
                "%d batches per epoch", job.train.steps, start_step, accum, batch_size, shard_id, num_shards,
                per_epoch)
    return _batches(dataset, epochs)


def _run(job, trainer, batches, evaluator, pos: _Position, log: MetricsLog, checkpointer, is_main: bool,
         progress: bool, meta: dict[str, Any]) -> dict[str, Any]:
    from tqdm import tqdm

    tokens_per_step = job.train.global_batch_size * job.model.seq_length
    accum, total = trainer.accum_steps, job.train.steps
    bar = tqdm(total=total, initial=pos.step, disable=not (progress and is_main), dynamic_ncols=True, unit="step")
    t_loop = time.time()
    last = {"loss": float("nan"), "heldout": None, "timed_tokens": 0, "timed_s": 0.0, "session_steps": 0}
    window_t, window_tokens = time.time(), 0
    while pos.step < total:
        t0 = time.time()
        mbs = [next(batches) for _ in range(accum)]
        fingerprint = zlib.crc32(b"".join(mb[0].asnumpy().tobytes() for mb in mbs))
        lr = lr_at(trainer.optimizer_step, job.optimizer, job.schedule, total)
        res = trainer.step(mbs)
        pos.step += 1
        pos.data_step += accum
        pos.tokens_seen += tokens_per_step
        dt = time.time() - t0
        last["session_steps"] += 1
        if last["session_steps"] > 1:  # the first step of a session includes graph compilation
            last["timed_tokens"] += tokens_per_step
            last["timed_s"] += dt
        window_tokens += tokens_per_step
        last["loss"] = res.loss
        tps = last["timed_tokens"] / last["timed_s"] if last["timed_s"] else tokens_per_step / dt
        bar.set_postfix(loss=f"{res.loss:.3f}", lr=f"{lr:.2e}", scale=f"{res.loss_scale:.0f}", tok_s=f"{tps:.0f}")
        bar.update(1)
        if pos.step % job.train.log_every == 0 or pos.step == total or res.overflow:
            log.write("train", step=pos.step, loss=res.loss, lr=lr, loss_scale=res.loss_scale,
                      grad_norm=res.grad_norm, overflow=res.overflow, tokens_seen=pos.tokens_seen,
                      tokens_per_s=window_tokens / max(time.time() - window_t, 1e-9), data=fingerprint,
                      time=time.time())
            window_t, window_tokens = time.time(), 0
        if evaluator is not None and (pos.step % job.train.eval_every == 0 or pos.step == total):
            last["heldout"] = evaluator()
            log.write("eval", step=pos.step, heldout_loss=last["heldout"], heldout_ppl=math.exp(last["heldout"]))
            if is_main and progress:
                bar.write(f"step {pos.step}: held-out loss {last['heldout']:.4f}")
        if pos.step % job.checkpoint.every_steps == 0 or pos.step == total:  # every rank saves its slices
            checkpointer.save(step=pos.step, data_step=pos.data_step, tokens_seen=pos.tokens_seen,
                              extra_meta={"loss": res.loss, "loss_scale": res.loss_scale, **meta})
    bar.close()
    return {**last, "t_loop_start": t_loop, "train_s": time.time() - t_loop, "pos": pos}


def _finish(job, result, net, train_files, run_dir: Path, info, t_start: float) -> dict[str, Any]:
    pos: _Position = result["pos"]
    heldout = result["heldout"]
    summary = {
        "run": job.run.name, "steps": pos.step, "tokens_seen": pos.tokens_seen,
        "wall_time_s": time.time() - t_start, "train_time_s": result["train_s"], "setup_s": result["setup_s"],
        "tokens_per_s": (result["timed_tokens"] / result["timed_s"]) if result["timed_s"] else 0.0,
        "final_train_loss": result["loss"], "heldout_loss": heldout,
        "heldout_ppl": math.exp(heldout) if heldout is not None else None,
        "rank": info.rank, "world_size": info.world_size, "weights_crc32": weights_digest(net),
    }
    if info.rank == 0:
        try:
            summary["unigram_entropy"] = unigram_entropy(token_counts(train_files, job.model.vocab_size))
        except Exception as exc:  # a summary extra: never fail a finished run over it
            logger.warning("could not compute the unigram entropy: %s", exc)
        png = plot_loss(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", title=job.run.name,
                        unigram=summary.get("unigram_entropy"))
        summary["loss_curve"] = str(png)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        logger.debug("summary:\n%s", summary_text(summary))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"summary_rank{info.rank}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
