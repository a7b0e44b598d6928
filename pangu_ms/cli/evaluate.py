"""`python -m pangu_ms eval --ckpt DIR --task NAME [--shots K] [--limit N] [--json]`.

Tasks are YAML files in `ascend_configs/tasks/` (or a path): perplexity-based classification
(the PanGu-alpha method, zero-, one- and few-shot), generation scored by exact match,
character F1 and ROUGE-1, and held-out perplexity (`--task heldout_ppl`).
"""
from __future__ import annotations

import argparse
import json

from pangu_ms.cli import add_checkpoint_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="few-shot evaluation and held-out perplexity of a checkpoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    p.add_argument("--task", required=True, help="task name (ascend_configs/tasks/NAME.yaml) or a task YAML path")
    p.add_argument("--shots", type=int, default=None, help="demonstrations per prompt (default: the task's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per scoring batch")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p


def format_result(r: dict) -> str:
    """One human-readable line per result."""
    head = f"{r['task']} ({r['type']}{', %d-shot' % r['shots'] if 'shots' in r else ''}, n={r.get('n', r.get('rows'))})"
    if r["type"] == "classification":
        return f"{head}: accuracy {r['accuracy']:.4f}  per label {r['per_label']}"
    if r["type"] == "generation":
        return f"{head}: exact match {r['exact_match']:.4f}  char F1 {r['char_f1']:.4f}  ROUGE-1 {r['rouge1']:.4f}"
    return f"{head}: perplexity {r['perplexity']:.3f} over {r['tokens']} tokens"


def run(args: argparse.Namespace) -> int:
    from pangu_ms.errors import ConfigError
    from pangu_ms.eval.runner import evaluate
    from pangu_ms.eval.tasks import load_task
    from pangu_ms.runtime import setup_context
    from pangu_ms.train.checkpoint import load_for_inference

    task = load_task(args.task)
    if args.limit is not None:
        if args.limit < 0:
            raise ConfigError(f"--limit {args.limit}: must be >= 0")
        task.limit = args.limit
    if args.shots is not None and args.shots < 0:
        raise ConfigError(f"--shots {args.shots}: must be >= 0")
    job, lm, tok = load_for_inference(args.ckpt)
    setup_context(job.run, args.device)
    result = evaluate(task, job, lm, tok, shots=args.shots, batch_size=args.batch_size)
    result["ckpt"] = args.ckpt
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
    return 0
