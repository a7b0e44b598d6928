"""`prepare`: corpora -> clean -> tokenize -> pack -> MindRecord shards + manifest + report.

Layout under `data.output_dir`:
    train/train.mindrecord0..N-1 (+ .db index files), heldout/heldout.mindrecord0..N-1,
    manifest.json (row/token counts, sources, tokenizer checksum, config), report.json
    (cleaning counts per reason) and report.txt (the same for humans).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pangu_ms.errors import DataError

SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"


def shard_files(output_dir: str | Path, split: str = "train") -> list[str]:
    """The MindRecord files of `split` written by prepare, in shard order.

    Raises DataError when prepare has not (completely) run for this output directory.
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    out = Path(output_dir)
    hint = "run `python -m pangu_ms prepare --config ...` first"
    if not (out / MANIFEST).is_file():
        raise DataError(f"no prepared data in {out} (missing {MANIFEST}): {hint}")
    files = [p for p in (out / split).glob(f"{split}.mindrecord*") if re.fullmatch(rf"{split}\.mindrecord\d+", p.name)]
    if not files:
        raise DataError(f"no {split} shards in {out / split}: {hint}")
    files.sort(key=lambda p: int(p.name.rsplit("mindrecord", 1)[1]))
    return [str(p) for p in files]


def read_manifest(output_dir: str | Path) -> dict:
    """The manifest.json prepare wrote (DataError if missing)."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {path}: run `python -m pangu_ms prepare --config ...` first")
    return json.loads(path.read_text(encoding="utf-8"))
