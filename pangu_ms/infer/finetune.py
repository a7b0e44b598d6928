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
projections (pangu_ms.infer.lora) and merges them into the weights before saving. The result
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
from mindspore import Tensor, nn, ops

from pangu_ms.config import JobConfig
from pangu_ms.eval.datasets import Example, load_split
from pangu_ms.eval.tasks import TaskConfig
from pangu_ms.models.pangu_alpha import CrossEntropy, PanguAlphaLM

log = logging.getLogger(__name__)


class FinetuneLoss(nn.Cell):
    """(ids [B, S], position ids [B, S], mask [B, S, S], label_rows [B*K], labels [B*K],
    lm_rows [B*J], lm_labels [B*J]) -> loss [].

    The loss is the mean NLL of the label tokens plus `lm_weight` times the mean NLL of J
    sampled next tokens of the prompt text: the auxiliary language-modelling objective of
    GPT fine-tuning (Radford et al. 2018), which keeps the model learning the task's domain
    while the label signal is still one bit per example. `*_rows` index the flattened [B*S]
    positions; pad labels count for nothing. Shares `lm`'s weights (names unchanged).
    """

    def __init__(self, lm: PanguAlphaLM, lm_weight: float = 0.0):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.loss = CrossEntropy(lm.config)
        self.gather = ops.Gather()
        self.lm_weight = float(lm_weight)

    def construct(self, input_ids, position_ids, attention_mask, label_rows, labels, lm_rows, lm_labels):
        h = self.lm.backbone(input_ids, position_ids, attention_mask)  # [B*S, H]
        loss = self.loss(self.lm.logits(self.gather(h, label_rows, 0)), labels)  # logits [B*K, V]
        if self.lm_weight > 0:
            loss = loss + self.lm_weight * self.loss(self.lm.logits(self.gather(h, lm_rows, 0)), lm_labels)
        return loss


class FinetuneStep(nn.Cell):
    """One AdamW step with global-norm clipping (fp32, no loss scale): same inputs -> loss []."""

    def __init__(self, network: FinetuneLoss, optimizer: nn.Optimizer, clip_norm: float):
        super().__init__(auto_prefix=False)
        self.network, self.optimizer = network, optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True)
        self.clip_norm = clip_norm
        self.network.set_grad()

    def construct(self, input_ids, position_ids, attention_mask, label_rows, labels, lm_rows, lm_labels):
        inputs = (input_ids, position_ids, attention_mask, label_rows, labels, lm_rows, lm_labels)
        loss = self.network(*inputs)
        grads = self.grad(self.network, self.weights)(*inputs)
        if self.clip_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
        return ops.depend(loss, self.optimizer(grads))


class WeightAverage:
    """Exponential moving average of `params`, kept in NumPy float32 next to the live weights.

    update() folds the current values in: avg <- decay * avg + (1 - decay) * current (the first
    call starts the average at the current values); copy_to_params() writes the average into
    the parameters (nothing happens before the first update).
    """

    def __init__(self, params: list, decay: float):
        self.params, self.decay, self.avg = list(params), float(decay), None
        self.updates = 0

    def update(self) -> None:
        current = [p.asnumpy().astype(np.float32) for p in self.params]  # astype copies
        if self.avg is None:
            self.avg = current
        else:
            for a, c in zip(self.avg, current):
                a *= self.decay
                a += (1.0 - self.decay) * c
        self.updates += 1

    def copy_to_params(self) -> None:
        if self.avg is not None:
            for p, a in zip(self.params, self.avg):
                p.set_data(Tensor(a, dtype=p.dtype))


EMA_EVERY = 4  # steps between average updates (each uses decay ema_decay**4): fewer host copies of the weights


def with_dropout(lm: PanguAlphaLM, dropout: float) -> PanguAlphaLM:
    """The same model and weights, rebuilt with `dropout` (nn.Dropout is fixed at build time)."""
    import mindspore as ms

    if dropout == lm.config.dropout:
        return lm
    out = PanguAlphaLM(dataclasses.replace(lm.config, dropout=dropout))
    missing, _ = ms.load_param_into_net(out, {p.name: p for p in lm.get_parameters()}, strict_load=True)
    if missing:
        raise RuntimeError(f"rebuilding the model with dropout={dropout} left weights unset: {missing[:3]}")
    return out


def lm_targets(ids: np.ndarray, first: np.ndarray, count: int, pad_id: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random positions per row inside its prompt and the tokens that follow them.

    ids [B, S] right-padded rows, first [B] the position that predicts the first label token
    (prompt tokens are ids[:, :first + 1]) -> positions [B, count] and targets [B, count]
    (pad_id for rows whose prompt is a single token).
    """
    pos = (rng.random((len(ids), count)) * first[:, None]).astype(np.int64)  # in [0, first)
    targets = np.take_along_axis(ids, pos + 1, axis=1)
    return pos.astype(np.int32), np.where(first[:, None] > 0, targets, pad_id).astype(np.int32)


def build_rows(examples: list[Example], task: TaskConfig, tok, *, max_tokens: int,
               pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded inputs [N, max_tokens], the positions predicting label tokens [N, K] and
    those label tokens [N, K] (K = longest label; shorter labels padded with pad_id)."""
    conts = {k: tok.encode(task.render("", w)[1]) for k, w in task.labels.items()}
    k_max = max(len(c) for c in conts.values())
    n = len(examples)
    ids = np.full((n, max_tokens), pad_id, np.int32)
    where = np.zeros((n, k_max), np.int32)
    labels = np.full((n, k_max), pad_id, np.int32)
    for r, e in enumerate(examples):
        c = conts[e.label]
        head = tok.encode(task.render(e.text)[0]) or [tok.eod_id]
        seq = head[-(max_tokens + 1 - len(c)):] + c  # <= max_tokens + 1 tokens
        ids[r, :len(seq) - 1] = seq[:-1]
        first = len(seq) - 1 - len(c)  # input position whose next token is c[0]
        where[r, :len(c)] = np.arange(first, first + len(c))
        labels[r, :len(c)] = c
    return ids, where, labels


def _evaluate(task: TaskConfig, lm, tok, shots: int) -> dict:
    from pangu_ms.eval.runner import classify
    from pangu_ms.eval.scoring import Scorer

    r = classify(task, Scorer(lm, batch_size=16), tok, shots)
    log.info("%s %d-shot accuracy %.4f (n=%d)", task.name, shots, r["accuracy"], r["n"])
    return {"shots": shots, "accuracy": r["accuracy"], "n": r["n"], "per_label": r["per_label"]}


def bucket_widths(buckets: list[int], max_tokens: int) -> np.ndarray:
    """The padded row widths: the entries of `buckets` below `max_tokens`, then `max_tokens`."""
    return np.array([b for b in buckets if b < max_tokens] + [max_tokens])


def length_batches(lengths: np.ndarray, batch_size: int, widths: np.ndarray, rng: np.random.Generator):
    """Endless batches (indices [batch_size], padded width) of rows grouped by length.

    Each row goes to the smallest of `widths` (increasing; the last holds every row) that holds
    it, so short reviews do not pay for the padding of long ones and each width compiles once.
    One epoch: every bucket shuffled and cut into batches (a bucket's last partial batch is
    topped up with other rows of the same bucket), the batches of all buckets shuffled.
    """
    if lengths.max() > widths[-1]:
        raise ValueError(f"a row of {lengths.max()} tokens is wider than the widest bucket {widths[-1]}")
    widths = widths[np.searchsorted(widths, lengths)]
    groups = {int(w): np.flatnonzero(widths == w) for w in np.unique(widths)}
    while True:
        epoch = []
        for w, idx in groups.items():
            idx = rng.permutation(idx)
            short = -len(idx) % batch_size
            idx = np.concatenate([idx, rng.choice(idx, short)]) if short else idx
            epoch += [(idx[i:i + batch_size], w) for i in range(0, len(idx), batch_size)]
        for k in rng.permutation(len(epoch)):
            yield epoch[k]


def _train(step: FinetuneStep, ids: np.ndarray, where: np.ndarray, labels: np.ndarray, cfg, *,
           pad_id: int, seed: int, average: WeightAverage | None = None, average_from: int = 0) -> list[float]:
    """Run cfg.steps steps over shuffled, length-bucketed epochs; returns the loss per step.
    `average` (if given) is updated every EMA_EVERY steps after step `average_from`."""
    from pangu_ms.data.dataset import eod_reset

    rng = np.random.default_rng(seed)
    lengths = where.max(axis=1) + 1  # input tokens of each row (its last label position + 1)
    batches = length_batches(lengths, cfg.batch_size, bucket_widths(cfg.length_buckets, ids.shape[1]), rng)
    masks = {}  # width -> (positions, plain causal mask): one example per row
    losses = []
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        batch, width = next(batches)
        if width not in masks:
            pos, mask = eod_reset(np.zeros((cfg.batch_size, width + 1), np.int32), 0, reset_at_eod=False)
            masks[width] = Tensor(pos), Tensor(mask)
        offset = width * np.arange(len(batch))[:, None]  # row b starts at b * width in [B*width]
        lm_pos, lm_tgt = lm_targets(ids[batch], where[batch, 0], cfg.lm_positions, pad_id, rng)
        loss = float(step(Tensor(ids[batch, :width]), *masks[width],
                          Tensor((where[batch] + offset).reshape(-1).astype(np.int32)),
                          Tensor(labels[batch].reshape(-1)),
                          Tensor((lm_pos + offset).reshape(-1).astype(np.int32)),
                          Tensor(lm_tgt.reshape(-1))).asnumpy())
        losses.append(loss)
        if average is not None and i + 1 > average_from and (i + 1) % EMA_EVERY == 0:
            average.update()
        if (i + 1) % 20 == 0 or i == 0:
            log.info("finetune step %d/%d loss %.4f (%.2f s/step)", i + 1, cfg.steps,
                     float(np.mean(losses[-20:])), (time.perf_counter() - t0) / (i + 1))
    return losses


def _optimizer(params: list, job: JobConfig, steps: int) -> nn.Optimizer:
    """The pretraining AdamW and schedule; a single group when every parameter has the same
    decay rule (LoRA adapters: all decay), which the two-group builder does not accept."""
    from pangu_ms.train.optimizer import WarmupCosineLR, build_optimizer, decays

    rules = {decays(p.name) for p in params}
    if len(rules) == 2:
        return build_optimizer(params, job.optimizer, job.schedule, steps)
    o = job.optimizer
    return nn.AdamWeightDecay(params, learning_rate=WarmupCosineLR(o, job.schedule, steps), beta1=o.beta1,
                              beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay if rules == {True} else 0.0)


def finetune(job: JobConfig) -> dict:
    """Fine-tune `job.finetune.init` on `job.finetune.task`; returns the results dict."""
    from pangu_ms.eval.tasks import load_task
    from pangu_ms.infer.lora import apply_lora, merged_weights
    from pangu_ms.train.checkpoint import load_for_inference

    ft = job.finetune
    t_start = time.perf_counter()
    base_job, lm, tok = load_for_inference(ft.init)
    lm = with_dropout(lm, ft.dropout)
    lm.set_train(False)
    task = load_task(ft.task)
    if task.type != "classification":
        raise ValueError(f"finetune.task={ft.task!r} is a {task.type} task; fine-tuning needs classification")
    task.limit = ft.eval_limit
    if ft.max_tokens > base_job.model.seq_length:
        raise ValueError(f"finetune.max_tokens={ft.max_tokens} exceeds the model's seq_length={base_job.model.seq_length}")
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
    optimizer = _optimizer(trainable, job, ft.steps)
    step = FinetuneStep(network, optimizer, job.optimizer.clip_norm)
    step.set_train(True)
    t_train = time.perf_counter()
    average = WeightAverage(trainable, ft.ema_decay ** EMA_EVERY) if ft.ema_decay > 0 else None
    losses = _train(step, ids, where, labels, ft, pad_id=base_job.model.pad_id, seed=job.run.seed,
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
