"""Source mixing, packing documents into fixed rows, and writing MindRecord shards.

Mixing (the paper fixed a weight and an epoch cap per source): with shares
p_i = weight_i / sum(weights) and T_i training tokens in source i, the mix has
total = min_i(T_i * epochs_i / p_i) tokens, p_i * total of them from source i, i.e.
`passes_i = p_i * total / T_i` (<= epochs_i) passes over it: whole passes repeat every
document, a fractional pass takes documents in a seeded random order until its token
budget is met. Every source gets its weight's share, none exceeds its epoch cap.

Packing: documents (in a seeded random order) are concatenated, each followed by `<eod>`,
and cut into rows of `seq_length + 1` ids with a stride of `seq_length`: consecutive rows
overlap by one id, so every token of the stream is a label exactly once. Tail policy:
training rows are never padded; the last `< seq_length` ids that cannot fill a row are
dropped (and counted). Held-out rows pad that tail with `<pad>` (labels equal to pad_id are
not scored) so small held-out sets still give a row.

Shards: rows are split into `num_shards` contiguous blocks, one MindRecord file each
(`<split>/<split>.mindrecord<k>` plus MindSpore's `.db` index), written into a temporary
directory that is renamed into place only when every file is complete.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from pangu_ms.data.dataset import ROW_COLUMN, row_schema
from pangu_ms.data.shards import DOMAIN_COLUMN
from pangu_ms.errors import DataError

logger = logging.getLogger(__name__)


def mixing_plan(names: list[str], weights: list[float], epochs: list[float], tokens: list[int],
                docs: list[int]) -> list[dict]:
    """Tokens and passes per source (see module docstring); one dict per source."""
    if any(t <= 0 for t in tokens):
        empty = [n for n, t in zip(names, tokens) if t <= 0]
        raise DataError(f"source(s) {empty} have no training tokens after cleaning; remove them from "
                        "data.sources or relax the cleaning thresholds")
    shares = [w / sum(weights) for w in weights]
    total = min(t * e / p for t, e, p in zip(tokens, epochs, shares))
    plan = []
    for name, p, t, e, d in zip(names, shares, tokens, epochs, docs):
        passes = min(e, p * total / t)
        plan.append({"source": name, "weight_share": round(p, 6), "epochs_cap": e, "docs": d,
                     "tokens_available": t, "passes": passes, "tokens_planned": int(round(passes * t))})
    return plan


def select_documents(lengths: list[int], passes: float, rng: np.random.Generator) -> list[int]:
    """Document indices for `passes` passes: whole passes in order, then a seeded partial pass."""
    full = int(np.floor(passes + 1e-9))
    order = list(range(len(lengths))) * full
    budget = (passes - full) * sum(lengths)
    if budget > 0:
        taken = 0
        for i in rng.permutation(len(lengths)):
            if taken >= budget:
                break
            order.append(int(i))
            taken += lengths[i]
    return order


def pack_rows(docs: list[list[int]], seq_length: int, eod_id: int, *,
              pad_id: int | None = None) -> tuple[np.ndarray, dict]:
    """Pack token lists into int32 rows [N, seq_length + 1] with `<eod>` after every document.

    Rows start every `seq_length` ids (one id overlap). With `pad_id` the tail is padded
    into a last row; without it the tail is dropped. Returns (rows, counts).
    """
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    stream = np.empty(int(lengths.sum()), dtype=np.int32)
    ends = np.cumsum(lengths)
    for doc, end in zip(docs, ends):
        stream[end - len(doc) - 1:end - 1] = doc
    stream[ends - 1] = eod_id
    n = max(0, (len(stream) - 1) // seq_length)
    covered = n * seq_length + 1 if n else 0
    tail = len(stream) - covered if n else len(stream)
    pieces = [np.lib.stride_tricks.sliding_window_view(stream, seq_length + 1)[::seq_length][:n]] if n else []
    padded = 0
    if pad_id is not None and tail > 0:
        start = max(0, covered - 1)
        last = np.full(seq_length + 1, pad_id, dtype=np.int32)
        last[:len(stream) - start] = stream[start:]
        pieces.append(last[None])
        padded, tail = seq_length + 1 - (len(stream) - start), 0
    rows = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros((0, seq_length + 1), np.int32)
    return rows, {"documents": len(docs), "stream_tokens": int(len(stream)), "rows": int(len(rows)),
                  "tail_tokens_dropped": int(tail if pad_id is None else 0), "pad_tokens": int(padded)}


def _cell(x):
    """One row's value of an extra column: an array stays an array, a scalar becomes a Python number."""
    return x.item() if np.ndim(x) == 0 else x


def write_shards(rows: np.ndarray, out_dir: str | Path, split: str, num_shards: int,
                 columns: dict[str, np.ndarray] | None = None) -> list[str]:
    """Write rows as `<out_dir>/<split>/<split>.mindrecord<k>` through a temporary directory.

    `columns` adds per-row arrays ([N, ...] int32 or float32) as columns of their own next to
    `input_ids`: stage-2 code rows' `loss_mask` and `pair_id`, PanGu-Sigma's scalar `domain_id`.

    The old `<split>` directory is replaced only after every new shard is committed, so an
    interrupted run leaves either the old complete set or a `.tmp-*` directory, never a
    partial shard under the final name.
    """
    from mindspore.mindrecord import FileWriter

    if len(rows) == 0:
        raise DataError(f"no {split} rows to write")
    columns = columns or {}
    schema = row_schema(rows.shape[1] - 1)
    for name, arr in columns.items():
        if len(arr) != len(rows):
            raise DataError(f"column {name!r} has {len(arr)} rows, {split} has {len(rows)}")
        schema[name] = {"type": "float32" if arr.dtype.kind == "f" else "int32"}
        if arr.ndim > 1:
            schema[name]["shape"] = list(arr.shape[1:])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob(f".tmp-{split}-*")) + list(out.glob(f".old-{split}-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; never a complete shard set
    tmp = out / f".tmp-{split}-{os.getpid()}"
    tmp.mkdir()
    k = max(1, min(num_shards, len(rows)))
    bounds = np.linspace(0, len(rows), k + 1).round().astype(int)
    try:
        for s in range(k):
            writer = FileWriter(str(tmp / f"{split}.mindrecord{s}"), shard_num=1, overwrite=True)
            writer.set_header_size(1 << 16)
            writer.set_page_size(1 << 22)
            writer.add_schema(schema, f"pangu_ms {split} rows")
            lo, hi = bounds[s], bounds[s + 1]
            for i in range(lo, hi, 4096):
                j = min(hi, i + 4096)
                writer.write_raw_data([{ROW_COLUMN: rows[k], **{name: _cell(arr[k]) for name, arr in columns.items()}}
                                       for k in range(i, j)])
            writer.commit()
        final = out / split
        if final.exists():
            trash = out / f".old-{split}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = [str(out / split / f"{split}.mindrecord{s}") for s in range(k)]
    logger.info("wrote %d %s rows into %d shards under %s", len(rows), split, k, out / split)
    return files
