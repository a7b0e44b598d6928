"""Mixing plan, packing, and the prepare command: shards, manifest, report, determinism, bad input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pangu_ms.config import load_config
from pangu_ms.data.shards import count_rows
from pangu_ms.data.packing import mixing_plan, pack_rows, select_documents
from pangu_ms.data.prepare import prepare
from pangu_ms.data.shards import read_manifest, shard_files
from pangu_ms.errors import DataError
from pangu_ms.tokenizer import PanguTokenizer, save_tokenizer

EOD, PAD, S = 8, 6, 8


def test_pack_rows_stride_and_tail():
    docs = [[11, 12, 13], [14] * 6, [15, 16]]
    stream = [11, 12, 13, EOD] + [14] * 6 + [EOD, 15, 16, EOD]  # 14 ids
    rows, counts = pack_rows(docs, S, EOD)
    assert rows.dtype == np.int32 and rows.shape == (1, S + 1)
    assert rows[0].tolist() == stream[:9]
    assert counts["tail_tokens_dropped"] == 5 and counts["pad_tokens"] == 0 and counts["stream_tokens"] == 14
    rows, counts = pack_rows(docs * 3, 4, EOD)  # 42 ids -> rows start every 4 ids and overlap by one
    flat = stream * 3
    assert [r.tolist() for r in rows] == [flat[i:i + 5] for i in range(0, 40, 4)]
    assert counts["tail_tokens_dropped"] == 42 - (10 * 4 + 1)
    held, counts = pack_rows(docs, S, EOD, pad_id=PAD)  # held-out: tail padded, nothing dropped
    assert held[1].tolist() == stream[8:] + [PAD] * 3 and counts["pad_tokens"] == 3
    tiny, _ = pack_rows([[11]], S, EOD, pad_id=PAD)
    assert tiny.tolist() == [[11, EOD] + [PAD] * 7]


def test_mixing_plan_weights_and_caps():
    plan = mixing_plan(["a", "b"], [3.0, 1.0], [1.0, 1.0], [3000, 500], [30, 5])
    assert [p["tokens_planned"] for p in plan] == [1500, 500]  # b is exhausted: a gets 3x b
    plan = mixing_plan(["a", "b"], [1.0, 1.0], [1.0, 4.0], [3000, 500], [30, 5])
    assert [p["passes"] for p in plan] == pytest.approx([2000 / 3000, 4.0])
    order = select_documents([10] * 5, 2.4, np.random.default_rng(0))
    assert sorted(order[:10]) == sorted(list(range(5)) * 2) and len(order) == 12
    with pytest.raises(DataError, match="no training tokens"):
        mixing_plan(["a"], [1.0], [1.0], [0], [0])


@pytest.fixture()
def job_file(tmp_path, pd_docs, trained_tokenizer):
    """A prepare config over a .txt and a .jsonl corpus (with planted noise), tokenizer already trained."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    txt = pd_docs[:40] + [pd_docs[0], "太短", "English only, long enough to pass the length filter here."]
    (corpus / "news.txt").write_bytes("\n\n".join(txt).encode() + b"\n\n\xff\xfe broken\n")
    lines = [json.dumps({"text": d}, ensure_ascii=False) for d in pd_docs[40:60]] + ["{oops"]
    (corpus / "more.jsonl").write_text("\n".join(lines), encoding="utf-8")
    tok_dir = tmp_path / "tok"
    save_tokenizer(trained_tokenizer, tok_dir)
    cfg = {"model": {"vocab_size": 2000, "seq_length": 32},
           "tokenizer": {"path": str(tok_dir), "vocab_size": 2000, "character_coverage": 0.99},
           "data": {"sources": [{"name": str(corpus / "news.txt"), "weight": 2.0},
                                {"name": str(corpus / "more.jsonl"), "weight": 1.0, "epochs": 3.0}],
                    "output_dir": str(tmp_path / "data"), "num_shards": 3, "heldout_fraction": 0.1,
                    "num_workers": 2},
           "run": {"seed": 5}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _digest(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def test_prepare_end_to_end_deterministic(job_file, trained_tokenizer):
    job = load_config(job_file)
    manifest = prepare(job)
    out = Path(job.data.output_dir)
    train, held = shard_files(out, "train"), shard_files(out, "heldout")
    assert len(train) == 3 and manifest == read_manifest(out)
    assert count_rows(train) == manifest["splits"]["train"]["rows"] > 0
    assert count_rows(held) == manifest["splits"]["heldout"]["rows"] > 0
    assert manifest["tokenizer"]["sha256"] == trained_tokenizer.checksum
    plan = manifest["sources"]
    assert plan[0]["tokens_planned"] / plan[1]["tokens_planned"] == pytest.approx(2.0, rel=1e-3)  # weights 2:1
    assert plan[0]["passes"] == pytest.approx(1.0) and 0 < plan[1]["passes"] <= 3.0  # news is the binding cap
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    total = report["total"]
    assert total["skipped"] == {"undecodable": 1, "bad_json": 1}
    assert total["dropped"] == {"exact_duplicate": 1, "low_cjk": 1, "too_short": 1}
    assert total["train_docs"] + total["heldout_docs"] == total["docs_kept"] == 60
    assert "mixing plan" in (out / "report.txt").read_text(encoding="utf-8")
    # the same inputs give byte-identical shards and manifest
    digest = _digest(train + held)
    assert prepare(load_config(job_file)) == manifest
    assert _digest(shard_files(out, "train") + shard_files(out, "heldout")) == digest


def test_heldout_split_by_document(job_file, trained_tokenizer):
    job = load_config(job_file)
    prepare(job)
    import mindspore.dataset as ds

    def docs_of(split):
        rows = [r[0] for r in ds.MindDataset(shard_files(job.data.output_dir, split), shuffle=False)
                .create_tuple_iterator(output_numpy=True)]
        text = trained_tokenizer.decode([i for r in rows for i in r[:-1].tolist() + [EOD]])
        return {d for d in text.split("\n") if len(d) > 30}

    held, train = docs_of("heldout"), docs_of("train")
    assert held and not held & train


def test_prepare_trains_missing_tokenizer_and_cli(job_file, tmp_path, capsys):
    from pangu_ms.cli import main

    tok_dir = tmp_path / "new_tok"
    assert main(["prepare", "--config", str(job_file), "--set", f"tokenizer.path={tok_dir}",
                 "--set", "tokenizer.corpus=" + load_config(job_file).data.sources[0].name, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "manifest:" in out and "mixing plan" in out
    tok = PanguTokenizer.from_dir(tok_dir)
    assert tok.vocab_size == 2000
    assert read_manifest(tmp_path / "data")["tokenizer"]["sha256"] == tok.checksum


def test_prepare_bad_input_leaves_nothing_complete(job_file, tmp_path, monkeypatch):
    job = load_config(job_file, ["model.seq_length=100000", "model.vocab_size=2000"])
    with pytest.raises(DataError, match="fewer than one row"):
        prepare(job)
    out = Path(job.data.output_dir)
    assert not (out / "manifest.json").exists() and not (out / "train").exists()
    with pytest.raises(DataError, match="run `python -m pangu_ms prepare"):
        shard_files(out, "train")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        prepare(load_config(job_file, [f"data.sources=[{{name: {tmp_path / 'empty.txt'}}}]"]))
    with pytest.raises(DataError, match="model.vocab_size"):
        prepare(load_config(job_file, ["model.vocab_size=1000"]))

    prepare(load_config(job_file, ["data.heldout_fraction=0.0"]))
    with pytest.raises(DataError, match="no heldout split"):
        shard_files(out, "heldout")

    # a crash while writing shards leaves the previous complete set, no partial files, no manifest
    prepare(load_config(job_file))
    before = _digest(shard_files(out, "train"))
    from mindspore.mindrecord import FileWriter

    def boom(self):
        raise OSError("disk full")

    monkeypatch.setattr(FileWriter, "commit", boom)
    with pytest.raises(OSError):
        prepare(load_config(job_file, ["run.seed=6"]))
    assert not (out / "manifest.json").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp or half-replaced directories
    assert _digest([str(p) for p in sorted((out / "train").glob("train.mindrecord?"))]) == before


def test_tokenizer_corpus_sources_trains_on_every_source(job_file, tmp_path):
    from pangu_ms.tokenizer import INFO_FILE

    def trained_on(corpus: str, name: str) -> dict:
        tok_dir = tmp_path / name
        prepare(load_config(job_file, [f"tokenizer.path={tok_dir}", f"tokenizer.corpus={corpus}",
                                       f"data.output_dir={tmp_path / 'd'}"]), progress=False)
        return json.loads((tok_dir / INFO_FILE).read_text(encoding="utf-8"))

    first = trained_on(load_config(job_file).data.sources[0].name, "tok_first")
    both = trained_on("sources", "tok_both")
    assert both["corpus"] == "sources"
    assert both["sentences"] > first["sentences"]  # the .jsonl source's documents were added
