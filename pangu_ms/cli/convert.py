"""`python -m pangu_ms convert --from FORMAT --src PATH --out DIR [--config MODEL.yaml]`
and `python -m pangu_ms convert --to FORMAT --src CKPT --out PATH`.

Formats (names and orientations: pangu_ms/checkpoint/formats.py, docs/checkpoints.md):
    released     the 2021 release: filerted_<rank>.ckpt slices, the strategy file and
                 word_embedding.npy, position_embedding.npy, top_query_embedding.npy (import only)
    mindformers  a MindFormers 1.3.2 PanguAlphaHeadModel checkpoint (.ckpt)
    hf           a directory with model.safetensors and config.json (GPTPangu layout)

Import writes OUT/checkpoints/step_00000000/ with the weights, config.yaml and the tokenizer
(`--tokenizer vocab.model`, or a vocab.model found beside --src), so `generate`, `eval` and
`finetune` take `--ckpt OUT`. Without `--config` the shipped model size with the same
dimensions is used. Export reads the newest complete checkpoint under --src.
"""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="import or export released / MindFormers / HF weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="src_format", choices=["released", "mindformers", "hf"],
                     help="import weights of this format into our checkpoint")
    way.add_argument("--to", dest="dst_format", choices=["mindformers", "hf"],
                     help="export our checkpoint's weights in this format")
    p.add_argument("--src", required=True, help="the foreign checkpoint (import) or our run/step dir (export)")
    p.add_argument("--out", required=True, help="output run dir (import), .ckpt file or directory (export)")
    p.add_argument("--config", default=None, help="model config YAML (ascend_configs/models/...) for the weights")
    p.add_argument("--tokenizer", default=None, help="vocab.model to put beside the converted weights")
    p.add_argument("--strategy", default=None, help="released: the strategy file (default: the one in --src)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pangu_ms.checkpoint.convert import export_weights, import_weights

    if args.src_format:
        out = import_weights(args.src_format, args.src, args.out, config=args.config, tokenizer=args.tokenizer,
                             strategy=args.strategy)
    else:
        out = export_weights(args.dst_format, args.src, args.out)
    print(out)
    return 0
