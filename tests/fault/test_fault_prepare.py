"""`prepare` killed with SIGKILL from outside while it trains the tokenizer and while it
writes shards (into an empty output directory and over a complete one), then re-run.

After every kill the output directory must not look prepared (no manifest, so `pretrain`,
the pre-flight and the readers refuse it with the "run prepare first" error) and the
tokenizer directory holds no half-written model; the re-run that completes writes files
byte-identical to an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import pytest
import yaml

import kill_driver as kd

pytestmark = pytest.mark.e2e
SEED = 20261202


def _tree_digest(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of every file under root/<name> (files or directories), by relative path."""
    out = {}
    for name in names:
        base = root / name
        for f in sorted([base] if base.is_file() else base.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory, pd_docs):
    root = tmp_path_factory.mktemp("prepare_fault")
    corpus = root / "news.txt"
    corpus.write_text("\n\n".join(pd_docs[:150]), encoding="utf-8")
    cfg = {"model": {"vocab_size": 3000, "seq_length": 64},
           "tokenizer": {"path": str(root / "tok"), "vocab_size": 3000, "character_coverage": 0.98,
                         "corpus": "sources"},
           "data": {"sources": [{"name": str(corpus)}], "output_dir": str(root / "data"), "num_shards": 4,
                    "heldout_fraction": 0.1, "num_workers": 2},
           "run": {"seed": 11}}
    config = root / "prepare.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    child = kd.start(["prepare", "--config", str(config), "--no-progress"], root / "logs" / "reference")
    assert child.wait() == 0, child.stderr()[-3000:]
    outputs = ["train", "heldout", "manifest.json"]
    reference = _tree_digest(root / "data", outputs) | _tree_digest(root, ["tok/vocab.model"])
    assert any(k.startswith("train/") for k in reference) and "manifest.json" in reference
    shutil.rmtree(root / "data")
    shutil.rmtree(root / "tok")
    return root, config, outputs, reference


def _assert_not_prepared(root: Path, config: Path, where: str) -> None:
    """What a killed prepare leaves must be refused by every reader, with the usual hint."""
    from pangu_ms.cluster.preflight import check_data
    from pangu_ms.config import load_config
    from pangu_ms.data.shards import shard_files
    from pangu_ms.errors import DataError

    data = root / "data"
    assert not (data / "manifest.json").exists(), f"{where}: a killed prepare left a manifest"
    with pytest.raises(DataError, match="run `python -m pangu_ms prepare"):
        shard_files(data, "train")
    with pytest.raises(DataError, match="prepare"):
        check_data(load_config(config))
    model = root / "tok" / "vocab.model"
    if model.exists():  # written by temp file + rename: complete or absent
        from pangu_ms.tokenizer import PanguTokenizer

        assert PanguTokenizer.from_dir(root / "tok").vocab_size == 3000


def test_prepare_killed_while_training_the_tokenizer_and_mid_shard(job):
    root, config, outputs, reference = job
    rng = random.Random(SEED)
    args = ["prepare", "--config", str(config), "--no-progress"]
    data = root / "data"
    table = []

    def tmp_split_dirs() -> list[str]:
        return [p.name for p in data.glob(".tmp-*")] if data.is_dir() else []

    # 1. a random moment before the shards: loading, cleaning, segmenting, training the tokenizer
    child = kd.start(args, root / "logs" / "kill1")
    what = kd.kill_after(child, rng.uniform(0.5, 3.0), lambda: (
        "tokenizer not yet written" if not (root / "tok" / "vocab.model").exists() else "tokenizer written")
        + (f", shard temp dirs {tmp_split_dirs()}" if tmp_split_dirs() else ""))
    assert what is not None, "prepare finished before the first kill"
    _assert_not_prepared(root, config, "kill 1")
    table.append(("random moment before the shards", what))

    # 2. mid-shard into an empty output directory, then 3. mid-shard over a complete one
    for n, over_complete in ((2, False), (3, True)):
        if over_complete:
            done = kd.start(args, root / "logs" / f"complete{n}")
            assert done.wait() == 0, done.stderr()[-3000:]
            assert (data / "manifest.json").exists()
        child = kd.start(args, root / "logs" / f"kill{n}")
        what = kd.kill_when(child, lambda: bool(tmp_split_dirs()),
                            lambda: f"writing {tmp_split_dirs()}" if tmp_split_dirs() else None, timeout=600)
        assert what is not None, f"kill {n}: prepare finished before a shard write was caught"
        _assert_not_prepared(root, config, f"kill {n}")
        table.append((f"mid-shard, {'over a complete output' if over_complete else 'first run'}", what))

    done = kd.start(args, root / "logs" / "final")
    assert done.wait() == 0, done.stderr()[-3000:]
    assert not tmp_split_dirs()  # the temp directories of killed runs are cleared
    got = _tree_digest(data, outputs) | _tree_digest(root, ["tok/vocab.model"])
    assert got == reference  # byte-identical to the uninterrupted run
    print("\nprepare kills:", *(f"  {p}: {w}" for p, w in table), sep="\n")
