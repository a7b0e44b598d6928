"""Reading what `prepare` wrote: the shard files of a split, the manifest, row counts.

Readers (training, evaluation, the launch pre-flight) import this module; only
`pangu_ms.data.prepare` writes. Layout under `data.output_dir`:
`train/train.mindrecord0..N-1` (+ `.db` index files), `heldout/heldout.mindrecord0..N-1`,
`manifest.json` (written last: without it no shard set is complete).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pangu_ms.errors import DataError

ROW_COLUMN = "input_ids"
LOSS_MASK_COLUMN = "loss_mask"  # stage-2 code rows: float32 [S], the weight of each label
PAIR_ID_COLUMN = "pair_id"  # stage-2 code rows: int32 [S + 1], the pair of each id (-1 on padding)
DOMAIN_COLUMN = "domain_id"
"""PanGu-Sigma shards: the domain id of each row (int32; a row never mixes domains)."""
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
    if not files and split not in read_manifest(out).get("splits", {}):
        raise DataError(f"prepare wrote no {split} split in {out} (data.heldout_fraction=0 or too few documents): "
                        "set data.heldout_fraction > 0 and re-run prepare, or turn held-out evaluation off")
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


def check_files(files: list[str]) -> list[str]:
    if not files:
        raise DataError("no MindRecord shard files given: run `python -m pangu_ms prepare --config ...` first")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"MindRecord shard not found: {missing[0]} "
                        "(run `python -m pangu_ms prepare --config ...` first)")
    return [str(f) for f in files]


def count_rows(files: list[str]) -> int:
    """Number of rows stored in a set of MindRecord shard files (all shards of one writer)."""
    import mindspore.dataset as ds

    return ds.MindDataset(check_files(files), columns_list=[ROW_COLUMN], shuffle=False).get_dataset_size()
