"""`python -m pangu_ms finetune --config FILE [--set finetune.method=lora ...]`.

Fine-tunes the checkpoint `finetune.init` on the train split of `finetune.task` (default:
sentiment on the built-in shopping reviews), full-parameter or LoRA, and reports the task's
zero-shot and few-shot accuracy before and zero-shot accuracy after. Writes a checkpoint
under `run.output_dir` (usable by `generate` and `eval`) and `finetune_results.json`.
"""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pangu_ms.cli import add_config_args

    p = subparsers.add_parser("finetune", help="fine-tune a checkpoint on a task (full or LoRA), eval before/after",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import mindspore as ms

    from pangu_ms.config import load_config
    from pangu_ms.runtime import setup_context
    from pangu_ms.finetune.run import finetune

    job = load_config(args.config, args.overrides)
    setup_context(job.run)
    ms.set_seed(job.run.seed)
    r = finetune(job)
    if args.json:
        print(json.dumps(r, ensure_ascii=False))
        return 0
    print(f"fine-tuned {r['init']} on {r['task']} ({r['method']}, {r['trainable_params']:,} trainable parameters, "
          f"{r['train_examples']} examples, {r['train_seconds']} s)")
    print("| model | shots | accuracy | n |")
    print("|---|---|---|---|")
    for name, rows in (("pretrained", r["before"]), ("fine-tuned", r["after"])):
        for row in rows:
            print(f"| {name} | {row['shots']} | {row['accuracy']:.4f} | {row['n']} |")
    print(f"loss {r['loss_first_last'][0]} -> {r['loss_first_last'][1]}; checkpoint {r['checkpoint']}")
    return 0
