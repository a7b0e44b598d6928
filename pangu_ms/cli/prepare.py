"""`python -m pangu_ms prepare --config FILE`: corpora -> cleaned, tokenized, packed MindRecord shards."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pangu_ms.cli import add_config_args

    p = subparsers.add_parser(
        "prepare", help="clean, tokenize and pack the data sources into MindRecord shards",
        description="Clean, tokenize (worker processes) and pack data.sources into MindRecord shards under "
                    "data.output_dir; trains the tokenizer at tokenizer.path first if it has no vocab.model.")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of the summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from pangu_ms.config import load_config
    from pangu_ms.data.prepare import prepare

    job = load_config(args.config, args.overrides)
    t0 = time.time()
    manifest = prepare(job, progress=not args.no_progress and sys.stderr.isatty())
    out = Path(job.data.output_dir)
    if args.json:
        print(json.dumps(manifest, ensure_ascii=False, indent=2))
        return 0
    print((out / "report.txt").read_text(encoding="utf-8").rstrip())
    print()
    for name, split in manifest["splits"].items():
        print(f"{name}: {split['rows']:,} rows of {manifest['row_length']} ids in {len(split['files'])} shards "
              f"under {out / name}")
    print(f"tokenizer: {job.tokenizer.path} ({manifest['tokenizer']['vocab_size']} pieces, "
          f"sha256 {manifest['tokenizer']['sha256'][:12]})")
    print(f"manifest: {out / 'manifest.json'}  report: {out / 'report.json'}, {out / 'report.txt'}")
    print(f"done in {time.time() - t0:.1f} s; next: python -m pangu_ms pretrain --config {args.config}")
    return 0
