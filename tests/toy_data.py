"""Toy prepared data and run configs for the tests that train (importable from every test
directory, like `pangu_testing`): MindRecord shards and a manifest in the `prepare` layout.

The toy corpus is learnable (each document counts up from a random start with a random
stride, modulo the vocabulary) and packed with the end-of-document id between documents.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

TOY_MODEL = dict(vocab_size=96, seq_length=16, num_layers=3, hidden_size=32, ffn_hidden_size=64,
                 num_heads=4, dropout=0.0)


def toy_rows(n_rows: int, seq_length: int, vocab_size: int, *, eod_id: int = 8, seed: int = 0) -> np.ndarray:
    """[n_rows, seq_length + 1] int32 packed rows of counting documents separated by eod."""
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    while len(stream) < n_rows * (seq_length + 1):
        length, start, stride = rng.integers(3, 2 * seq_length), rng.integers(0, vocab_size), rng.integers(1, 4)
        doc = 10 + (start + stride * np.arange(length)) % (vocab_size - 10)
        stream.extend(doc.tolist() + [eod_id])
    return np.asarray(stream[: n_rows * (seq_length + 1)], np.int32).reshape(n_rows, seq_length + 1)


def write_prepared(out: Path, *, seq_length: int, vocab_size: int, train_rows: int = 64, heldout_rows: int = 16,
                   shards: int = 2) -> Path:
    """Write `train/train.mindrecord*`, `heldout/heldout.mindrecord*` and a manifest.json with
    prepare's fields (files and rows per split) under `out`."""
    from mindspore.mindrecord import FileWriter

    splits = {}
    for split, n, seed in (("train", train_rows, 0), ("heldout", heldout_rows, 1)):
        (out / split).mkdir(parents=True, exist_ok=True)
        w = FileWriter(str(out / split / f"{split}.mindrecord"), shard_num=shards, overwrite=True)
        w.add_schema({"input_ids": {"type": "int32", "shape": [seq_length + 1]}}, "rows")
        w.write_raw_data([{"input_ids": r} for r in toy_rows(n, seq_length, vocab_size, seed=seed)])
        w.commit()
        files = sorted(f"{split}/{f.name}" for f in (out / split).glob(f"{split}.mindrecord*") if f.suffix != ".db")
        splits[split] = {"files": files, "rows": n}
    manifest = {"format": "pangu_ms.prepare/1", "seq_length": seq_length, "row_length": seq_length + 1,
                "splits": splits, "toy": True}
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def write_run_config(path: Path, data_dir: Path, out_dir: Path, **sections) -> Path:
    """A run YAML for the toy model: sections override the defaults below (one level deep)."""
    cfg = {
        "model": dict(TOY_MODEL),
        "tokenizer": {"path": str(path.parent / "no_tokenizer")},
        "data": {"output_dir": str(data_dir), "heldout_fraction": 0.1},
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "loss_scale": 65536.0},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "train": {"steps": 6, "global_batch_size": 4, "eval_every": 3, "eval_batches": 2, "log_every": 1},
        "run": {"output_dir": str(out_dir), "seed": 7},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path

