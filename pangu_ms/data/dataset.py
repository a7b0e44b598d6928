"""Training input pipeline: MindRecord shards -> batched (input_ids, position_id, document_id).

Notation: B batch, S sequence length (the model sees S tokens; a stored row holds S + 1 ids
so labels are the row shifted by one).

A shard row is one packed token row `input_ids` int32 [S + 1] (schema in `ROW_SCHEMA`),
documents separated by the end-of-document id. With `reset_at_eod` the pipeline computes,
per row and in NumPy:

- `position_id[j]` = j minus the index where j's document starts (restarts after each eod),
- `document_id[j]` = the number of eod ids strictly before j (the eod token belongs to the
  document it ends).

The model derives its attention mask from the document ids on the device (token i sees j iff
j <= i and document_id[i] == document_id[j]), so a batch carries 2 int32 [B, S] columns
besides the ids instead of an fp32 [B, S, S] mask (4 S^2 bytes a row, 4 MiB at S = 1024).
Only the first S ids (the model inputs) are looked at.
"""
from __future__ import annotations

import logging

import numpy as np

from pangu_ms.data.shards import DOMAIN_COLUMN, LOSS_MASK_COLUMN, ROW_COLUMN, check_files
from pangu_ms.errors import DataError

logger = logging.getLogger(__name__)



def row_schema(seq_length: int) -> dict:
    """MindRecord schema of a shard's rows: one int32 column of `seq_length + 1` ids (write_shards
    adds any extra columns)."""
    return {ROW_COLUMN: {"type": "int32", "shape": [seq_length + 1]}}


def document_ids(inputs: np.ndarray, eod_id: int) -> np.ndarray:
    """Per-token document index for inputs [..., S]: count of eod ids strictly before each token."""
    is_eod = (inputs == eod_id).astype(np.int32)
    doc = np.cumsum(is_eod, axis=-1) - is_eod  # exclusive cumsum: the eod stays in its document
    return doc


def eod_reset(rows: np.ndarray, eod_id: int, reset_at_eod: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Position ids and document ids for packed rows.

    Args:
        rows: int32 [B, S + 1] token rows (or [S + 1]).
        eod_id: end-of-document id.
        reset_at_eod: False gives plain positions 0..S-1 and one document per row (a plain
            causal mask).
    Returns:
        position_id int32 [B, S] and document_id int32 [B, S].
    """
    rows = np.asarray(rows)
    squeeze = rows.ndim == 1
    inputs = rows[None, :-1] if squeeze else rows[:, :-1]  # [B, S]
    b, s = inputs.shape
    arange = np.arange(s, dtype=np.int32)
    if not reset_at_eod:
        pos = np.broadcast_to(arange, (b, s)).copy()
        doc = np.zeros((b, s), np.int32)
    else:
        doc = document_ids(inputs, eod_id).astype(np.int32)  # [B, S]
        # start index of each token's document: the running max of "starts here" positions
        starts_here = np.concatenate([np.ones((b, 1), bool), doc[:, 1:] != doc[:, :-1]], axis=1)
        start = np.maximum.accumulate(np.where(starts_here, arange, 0), axis=1)  # [B, S]
        pos = (arange - start).astype(np.int32)
    if squeeze:
        return pos[0], doc[0]
    return pos, doc


def attention_allowed(document_id: np.ndarray) -> np.ndarray:
    """The mask the model builds from document ids, in NumPy (for tests and checks):
    [..., S] -> bool [..., S, S], True where token i may see token j (j <= i, same document)."""
    s = document_id.shape[-1]
    same = document_id[..., :, None] == document_id[..., None, :]
    return same & np.tril(np.ones((s, s), bool))


def _bind_seed(data, seed: int) -> None:
    """Re-apply `seed` whenever an iterator is created on `data`.

    MindSpore reads the global dataset seed when the iterator is built, not when the
    pipeline is defined; without this a `set_seed` elsewhere in between would change the
    shuffle order (and break exact resume).
    """
    import mindspore.dataset as ds

    for name in ("create_dict_iterator", "create_tuple_iterator"):
        original = getattr(data, name)

        def with_seed(*args, _original=original, **kwargs):
            ds.config.set_seed(seed)
            return _original(*args, **kwargs)

        setattr(data, name, with_seed)


def build_dataset(files: list[str], *, seq_length: int, batch_size: int, eod_id: int,
                  reset_at_eod: bool = True, shuffle: bool = True, seed: int = 0,
                  num_shards: int = 1, shard_id: int = 0, start_step: int = 0,
                  drop_remainder: bool = True, loss_mask: bool = False, domains: bool = False):
    """A `mindspore.dataset.Dataset` over packed-row MindRecord shards.

    Yields per batch: `input_ids` int32 [B, S + 1], `position_id` int32 [B, S],
    `document_id` int32 [B, S] (B = batch_size per rank, S = seq_length).

    Args:
        files: the MindRecord files of one split (`pangu_ms.data.shards.shard_files(...)`).
        shuffle: seeded global shuffle, a new order each epoch (same for the same seed).
        seed: shuffle seed; set (process global `mindspore.dataset.config.set_seed`) when the
            dataset is built and again whenever an iterator is created on it.
        num_shards, shard_id: data-parallel split by rank. Each rank gets
            ceil(rows / num_shards) rows; when num_shards does not divide the row count
            MindSpore repeats a few rows to even the shards out.
        start_step: batches to skip (counted across epochs) to resume exactly.
        drop_remainder: drop the last partial batch of each epoch.
        loss_mask: also read the shards' `loss_mask` column (float32 [S], a 0/1 flag per label,
            written for PanGu-Coder's stage-2 rows) and yield it after `document_id` as [B, S].
        domains: also yield PanGu-Sigma's `domain_id` int32 [B] last (shards written with domains).
    """
    import mindspore.dataset as ds

    files = check_files(files)
    if not 0 <= shard_id < num_shards:
        raise DataError(f"shard_id={shard_id} must be in [0, num_shards={num_shards})")
    if batch_size < 1 or seq_length < 1 or start_step < 0:
        raise DataError(f"batch_size={batch_size}, seq_length={seq_length}, start_step={start_step}: "
                        "batch_size and seq_length must be >= 1, start_step >= 0")
    ds.config.set_seed(seed)
    extra = [LOSS_MASK_COLUMN] * loss_mask + [DOMAIN_COLUMN] * domains
    columns = [ROW_COLUMN] + extra
    data = ds.MindDataset(files, columns_list=columns,
                          shuffle=ds.Shuffle.GLOBAL if shuffle else False,
                          num_shards=num_shards if num_shards > 1 else None,
                          shard_id=shard_id if num_shards > 1 else None)
    row_len = data.output_shapes()[0][-1]
    if row_len != seq_length + 1:
        raise DataError(f"shards {files[0]} hold rows of {row_len} ids but seq_length={seq_length} needs "
                        f"{seq_length + 1}: re-run prepare with model.seq_length={seq_length} "
                        "or use the matching config")
    per_rank = data.get_dataset_size()
    if drop_remainder and per_rank < batch_size:
        raise DataError(f"{per_rank} rows per rank cannot fill one batch of {batch_size}: "
                        "prepare more data, or lower the batch size / data-parallel degree")
    data = data.batch(batch_size, drop_remainder=drop_remainder)

    def add_eod_columns(rows: np.ndarray):
        pos, doc = eod_reset(rows, eod_id, reset_at_eod)
        return rows.astype(np.int32), pos, doc

    data = data.map(add_eod_columns, input_columns=[ROW_COLUMN],
                    output_columns=[ROW_COLUMN, "position_id", "document_id"])
    if extra:
        data = data.project([ROW_COLUMN, "position_id", "document_id", *extra])
    if start_step:
        data.set_init_step(start_step)
    _bind_seed(data, seed)
    logger.debug("dataset: %d files, %d rows on shard %d/%d, batch %d, start_step %d",
                 len(files), per_rank, shard_id, num_shards, batch_size, start_step)
    return data
