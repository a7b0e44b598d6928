"""Fine-tuning a pretrained PanGu-alpha on a classification task, evaluated before and after.

Training examples are the task's prompt (template up to `{label}`, zero-shot format) followed
by the gold label words; the loss is the next-token cross-entropy of the label tokens only.
This is the same quantity the perplexity classifier compares, so it trains exactly what is
evaluated. Logits are computed only at the positions that predict label tokens (the tied
vocabulary projection over every position would cost about a quarter of the step).

Two regularizers fight the small model's overfitting to a 16k-review train split: dropout
while training (`finetune.dropout`) and an exponential moving average of the weights
(`finetune.ema_decay`, Polyak averaging), which is what gets evaluated and saved.

`method: full` updates every weight; `method: lora` trains low-rank adapters on the attention
projections (pangu_ms.finetune.lora) and merges them into the weights before saving. The result
is a normal checkpoint (`<run.output_dir>/checkpoints/step_XXXXXXXX/`) that `generate` and
`eval` load like any other.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from mindspore import Tensor

from pangu_ms.config import JobConfig, validate_job
from pangu_ms.data.labelled import load_split
from pangu_ms.errors import ConfigError
from pangu_ms.eval.tasks import TaskConfig
from pangu_ms.finetune.ema import EMA_EVERY, WeightAverage
from pangu_ms.finetune.loss import FinetuneLoss, with_dropout
from pangu_ms.finetune.rows import bucket_widths, build_rows, length_batches, lm_targets
from pangu_ms.train.optimizer import build_optimizer
from pangu_ms.train.step import Trainer

log = logging.getLogger(__name__)



def _evaluate(task: TaskConfig, lm, tok, shots: int) -> dict:
    from pangu_ms.eval.runner import classify
    from pangu_ms.eval.scoring import Scorer

    r = classify(task, Scorer(lm, batch_size=16), tok, shots)
    log.info("%s %d-shot accuracy %.4f (n=%d)", task.name, shots, r["accuracy"], r["n"])
    return {"shots": shots, "accuracy": r["accuracy"], "n": r["n"], "per_label": r["per_label"]}


def _train(trainer: Trainer, ids: np.ndarray, where: np.ndarray, labels: np.ndarray, cfg, *,
           pad_id: int, seed: int, average: WeightAverage | None = None, average_from: int = 0) -> list[float]:
    """Run cfg.steps steps over shuffled, length-bucketed epochs; returns the loss per step.
    `average` (if given) is updated every EMA_EVERY steps after step `average_from`."""
    from pangu_ms.data.dataset import eod_reset

    rng = np.random.default_rng(seed)
    lengths = where.max(axis=1) + 1  # input tokens of each row (its last label position + 1)
    batches = length_batches(lengths, cfg.batch_size, bucket_widths(cfg.length_buckets, ids.shape[1]), rng)
    masks = {}  # width -> (positions, document ids): one example per row, a plain causal mask
    losses = []
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        batch, width = next(batches)
        if width not in masks:
            pos, doc = eod_reset(np.zeros((cfg.batch_size, width + 1), np.int32), 0, reset_at_eod=False)
            masks[width] = Tensor(pos), Tensor(doc)
        offset = width * np.arange(len(batch))[:, None]  # row b starts at b * width in [B*width]
        lm_pos, lm_tgt = lm_targets(ids[batch], where[batch, 0], cfg.lm_positions, pad_id, rng)
        inputs = (Tensor(ids[batch, :width]), *masks[width],
                  Tensor((where[batch] + offset).reshape(-1).astype(np.int32)), Tensor(labels[batch].reshape(-1)),
                  Tensor((lm_pos + offset).reshape(-1).astype(np.int32)), Tensor(lm_tgt.reshape(-1)))
        loss = trainer.step([inputs]).loss
        losses.append(loss)
        if average is not None and i + 1 > average_from and (i + 1) % EMA_EVERY == 0:
            average.update()
        if (i + 1) % 20 == 0 or i == 0:
            log.info("finetune step %d/%d loss %.4f (%.2f s/step)", i + 1, cfg.steps,
                     float(np.mean(losses[-20:])), (time.perf_counter() - t0) / (i + 1))
    return losses



def finetune(job: JobConfig) -> dict:
    """Fine-tune `job.finetune.init` on `job.finetune.task`; returns the results dict."""
    from pangu_ms.eval.tasks import load_task
    from pangu_ms.finetune.lora import apply_lora, merged_weights
    from pangu_ms.train.checkpoint import load_for_inference

    ft = job.finetune
    t_start = time.perf_counter()
    base_job, lm, tok = load_for_inference(ft.init)
    lm = with_dropout(lm, ft.dropout)
    lm.set_train(False)
    task = load_task(ft.task)
    if task.type != "classification":
        raise ConfigError(f"finetune.task={ft.task!r} is a {task.type} task; fine-tuning needs a classification task")
    task.limit = ft.eval_limit
    validate_job(dataclasses.replace(job, model=base_job.model), "finetune")  # rows must fit the loaded model
    trainable = apply_lora(lm, rank=ft.lora_rank, alpha=ft.lora_alpha) if ft.method == "lora" \
        else list(lm.trainable_params())
    network = FinetuneLoss(lm, ft.lm_loss_weight)
    result: dict = {"init": ft.init, "task": task.name, "method": ft.method, "dropout": ft.dropout,
                    "ema_decay": ft.ema_decay,
                    "trainable_params": int(sum(np.prod(p.shape) for p in trainable))}
    result["before"] = [_evaluate(task, lm, tok, 0)] + ([_evaluate(task, lm, tok, ft.eval_shots)] if ft.eval_shots else [])
    train = load_split(task.dataset, task.demo_split, text_field=task.text_field, label_field=task.label_field)
    if ft.train_examples:
        train = [train[i] for i in np.random.default_rng(job.run.seed).permutation(len(train))[:ft.train_examples]]
    ids, where, labels = build_rows(train, task, tok, max_tokens=ft.max_tokens, pad_id=base_job.model.pad_id)
    optimizer = build_optimizer(trainable, job.optimizer, job.schedule, ft.steps)
    trainer = Trainer(network, optimizer, job.optimizer)
    t_train = time.perf_counter()
    average = WeightAverage(trainable, ft.ema_decay ** EMA_EVERY) if ft.ema_decay > 0 else None
    losses = _train(trainer, ids, where, labels, ft, pad_id=base_job.model.pad_id, seed=job.run.seed,
                    average=average, average_from=job.schedule.warmup_steps)
    if average is not None:
        average.copy_to_params()  # evaluate and save the averaged weights
        result["ema_updates"] = average.updates
    result["train_seconds"] = round(time.perf_counter() - t_train, 1)
    result["train_examples"] = len(train)
    result["loss_first_last"] = [round(float(np.mean(losses[:10])), 4), round(float(np.mean(losses[-10:])), 4)]
    network.set_train(False)
    lm.set_train(False)
    result["after"] = [_evaluate(task, lm, tok, 0)]
    result["checkpoint"] = str(_save(job, base_job, lm, tok, merged_weights(lm), len(train)))
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(job.run.output_dir) / "finetune_results.json"
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


def _save(job: JobConfig, base_job: JobConfig, lm, tok, weights: dict, n_train: int) -> Path:
    """A normal checkpoint of the fine-tuned (merged) weights under run.output_dir."""
    from pangu_ms.tokenizer import save_tokenizer
    from pangu_ms.train.checkpoint import LM_PREFIX, save

    run_dir = Path(job.run.output_dir)
    tok_dir = run_dir / "tokenizer"
    save_tokenizer(tok, tok_dir)
    out_job = dataclasses.replace(base_job, tokenizer=dataclasses.replace(base_job.tokenizer, path=str(tok_dir)),
                                  finetune=job.finetune, run=dataclasses.replace(job.run))
    tensors = [{"name": LM_PREFIX + k, "data": Tensor(v)} for k, v in weights.items()]
    return save(run_dir, tensors, step=job.finetune.steps, data_step=0, tokens_seen=0, job=out_job,
                extra_meta={"finetuned_from": job.finetune.init, "train_examples": n_train})
