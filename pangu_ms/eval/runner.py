"""The PanGu-alpha evaluation methods: perplexity classification, generation, held-out perplexity.

Classification (the paper's method): for each example and each label, the prompt is the
task template filled with the text up to `{label}` (preceded by K demonstrations, each the
template filled with a training example and its gold label words), the continuation is
the label words; the label whose continuation has the lowest perplexity (mean negative
log-likelihood per continuation token) wins. Context and continuation are tokenized
separately, so exactly the label tokens are scored.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pangu_ms.eval import metrics
from pangu_ms.data.labelled import Example, load_split
from pangu_ms.eval.scoring import Scorer
from pangu_ms.eval.tasks import TaskConfig
from pangu_ms.errors import DataError

log = logging.getLogger(__name__)


class DemoSampler:
    """Draws K demonstrations from a pool; with labels, round-robin over them (balanced).

    The query's own text is never drawn (matters when demos come from the evaluated file).
    """

    def __init__(self, pool: list[Example], labels: list[str] | None, seed: int):
        self.rng = np.random.default_rng(seed)
        self.labels = list(labels or [])
        self.groups = {lab: [e for e in pool if e.label == lab] for lab in self.labels} if labels else {"": pool}

    def __call__(self, k: int, exclude: str | None = None) -> list[Example]:
        if k == 0:
            return []
        order = list(self.rng.permutation(list(self.groups)))
        demos: list[Example] = []
        for i in range(k):
            group = self.groups[order[i % len(order)]]
            for _ in range(8):  # re-draw if we hit the query itself
                cand = group[int(self.rng.integers(len(group)))] if group else None
                if cand is not None and cand.text != exclude and cand not in demos:
                    demos.append(cand)
                    break
        self.rng.shuffle(demos)
        return demos


def build_prompt(task: TaskConfig, example_text: str, demos: list[Example]) -> str:
    """Demonstrations (each with its gold answer) then the query, up to the answer."""
    parts = []
    for d in demos:
        head, tail = task.render(d.text, task.labels[d.label] if task.labels else d.label)
        parts.append(head + tail)
    parts.append(task.render(example_text)[0])
    return task.demo_separator.join(parts)


def _examples(task: TaskConfig, shots: int) -> tuple[list[Example], list[Example]]:
    test = load_split(task.dataset, task.split, text_field=task.text_field, label_field=task.label_field)
    if task.limit:
        test = test[: task.limit]
    pool = []
    if shots:
        # built-in data: the demo split; a JSONL file: the other examples of the file
        pool = load_split(task.dataset, task.demo_split, text_field=task.text_field, label_field=task.label_field)
        if len(pool) < 2:
            raise DataError(f"task {task.name}: no demonstrations available in split {task.demo_split!r}")
    return test, pool


def classify(task: TaskConfig, scorer: Scorer, tok, shots: int) -> dict:
    """Perplexity-based classification -> {'accuracy', 'n', 'per_label', 'confusion', ...}."""
    test, pool = _examples(task, shots)
    keys = list(task.labels)
    unknown = {e.label for e in test} - set(keys)
    if unknown:
        raise DataError(f"task {task.name}: labels {sorted(unknown)} in the data have no label words in the YAML")
    label_ids = {k: tok.encode(task.render("", task.labels[k])[1]) for k in keys}
    demos = DemoSampler(pool, keys, task.seed)
    items = []
    for e in test:
        ctx = tok.encode(build_prompt(task, e.text, demos(shots, e.text)))
        items.extend((ctx, label_ids[k]) for k in keys)
    t0 = time.perf_counter()
    lps = scorer.continuation_logprobs(items)
    nll = np.array([-lp.mean() for lp in lps]).reshape(len(test), len(keys))  # [n, labels]
    preds = [keys[i] for i in nll.argmin(axis=1)]
    gold = [e.label for e in test]
    confusion = {g: {p: sum(1 for a, b in zip(gold, preds) if a == g and b == p) for p in keys} for g in keys}
    return {"accuracy": metrics.accuracy(preds, gold), "n": len(test), "confusion": confusion,
            "per_label": {k: metrics.accuracy([p for p, g in zip(preds, gold) if g == k], [k] * gold.count(k))
                          for k in keys},
            "seconds": round(time.perf_counter() - t0, 2)}


def generate_task(task: TaskConfig, lm, tok, shots: int, *, batch_size: int = 4) -> dict:
    """Greedy decoding of each prompt; exact match, character F1 and ROUGE-1 against the target."""
    from pangu_ms.infer.decoder import IncrementalDecoder
    from pangu_ms.infer.generate import generate
    from pangu_ms.infer.sampling import SamplingParams

    test, pool = _examples(task, shots)
    demos = DemoSampler(pool, None, task.seed)
    s = lm.config.seq_length
    room = s - task.max_new_tokens
    if room < 1:
        raise DataError(f"task {task.name}: max_new_tokens={task.max_new_tokens} leaves no room in seq_length={s}")
    prompts = [tok.encode(build_prompt(task, e.text, demos(shots, e.text)))[-room:] or [tok.eod_id]
               for e in test]
    decoder = IncrementalDecoder(lm, batch_size=min(batch_size, len(prompts)), max_length=s)
    stop = tuple(tok.encode("\n")[-1:]) + (tok.eod_id,)
    t0 = time.perf_counter()
    outs = generate(decoder, prompts, SamplingParams(temperature=0.0), max_new_tokens=task.max_new_tokens,
                    stop_ids=stop)
    preds = [tok.decode(o.tokens).split("\n")[0].strip() for o in outs]
    refs = [task.labels.get(e.label, e.label) if task.labels else e.label for e in test]
    return {"exact_match": float(np.mean([metrics.exact_match(p, r) for p, r in zip(preds, refs)])),
            "char_f1": float(np.mean([metrics.char_f1(p, r) for p, r in zip(preds, refs)])),
            "rouge1": float(np.mean([metrics.rouge1(p, r) for p, r in zip(preds, refs)])),
            "n": len(test), "examples": [{"prediction": p, "reference": r} for p, r in list(zip(preds, refs))[:5]],
            "seconds": round(time.perf_counter() - t0, 2)}


def heldout_perplexity(task: TaskConfig, job, scorer: Scorer, tok) -> dict:
    """Token perplexity of a corpus: 'heldout' (the prepared held-out split), another `prepare` output
    directory (its held-out split) or a text/JSONL path. Rows with a `loss_mask` column (PanGu-Coder
    stage 2) count only the labels it marks (the code tokens and `<eot>`); `loss` is the mean NLL."""
    rows, mask = _perplexity_rows(task, job, tok)
    if task.limit:
        rows = rows[: task.limit]
    nll, n = 0.0, 0
    t0 = time.perf_counter()
    pad = job.model.pad_id
    for i, (lp, row) in enumerate(zip(scorer.logprobs([list(r) for r in rows], reset_at_eod=job.data.reset_at_eod),
                                      rows)):
        keep = row[1:] != pad
        if mask is not None:
            keep &= mask[i] > 0
        nll -= float(lp[keep].sum())
        n += int(keep.sum())
    return {"perplexity": metrics.perplexity(nll, n), "loss": nll / max(n, 1), "tokens": n, "rows": len(rows),
            "masked": mask is not None, "seconds": round(time.perf_counter() - t0, 2)}


def _perplexity_rows(task: TaskConfig, job, tok) -> tuple[np.ndarray, np.ndarray | None]:
    """int32 rows [N, seq_length + 1] (documents separated by <eod>, tail padded) and the rows'
    loss mask [N, seq_length] when the prepared split has one (else None)."""
    s = job.model.seq_length
    from pangu_ms.data.shards import LOSS_MASK_COLUMN, MANIFEST, read_manifest, shard_files

    prepared = job.data.output_dir if task.dataset == "heldout" else task.dataset
    if task.dataset == "heldout" or (Path(prepared) / MANIFEST).is_file():
        import mindspore.dataset as ds

        cols = ["input_ids"] + ([LOSS_MASK_COLUMN] if LOSS_MASK_COLUMN in read_manifest(prepared).get("columns", [])
                                else [])
        data = ds.MindDataset(shard_files(prepared, "heldout"), columns_list=cols, shuffle=False)
        got = list(data.create_dict_iterator(num_epochs=1, output_numpy=True))
        rows = np.stack([r["input_ids"] for r in got])
        return rows, (np.stack([r[LOSS_MASK_COLUMN] for r in got]) if len(cols) > 1 else None)
    from pangu_ms.data.corpora import load_texts
    from pangu_ms.data.packing import pack_rows

    docs = [tok.encode(t) for t in load_texts(task.dataset, task.text_field)]
    rows, _ = pack_rows(docs, s, tok.eod_id, pad_id=job.model.pad_id)
    return rows, None


def evaluate(task, job, lm, tok, *, shots: int | None = None, batch_size: int = 8) -> dict:
    """Run one task on a loaded model; returns the result dict the CLI prints."""
    k = task.shots if shots is None else shots
    result = {"task": task.name, "type": task.type, "shots": k}
    if task.type == "classification":
        result.update(classify(task, Scorer(lm, batch_size=batch_size), tok, k))
    elif task.type == "generation":
        result.update(generate_task(task, lm, tok, k, batch_size=min(batch_size, 4)))
    else:
        result.pop("shots")
        result.update(heldout_perplexity(task, job, Scorer(lm, batch_size=batch_size), tok))
    return result
