"""PanGu-Sigma's data: each source names a domain, rows are packed per domain (never mixed), the
shards carry a domain id per row and the training batches carry it to the model."""
from __future__ import annotations

import dataclasses

import mindspore.dataset as ds
import numpy as np
import pytest
import yaml

from pangu_ms.config import load_config
from pangu_ms.data.dataset import build_dataset
from pangu_ms.data.prepare import _pack_by_domain, prepare
from pangu_ms.data.shards import DOMAIN_COLUMN, ROW_COLUMN, shard_files
from pangu_ms.errors import ConfigError
from pangu_ms.tokenizer import save_tokenizer

EOD = 8


def test_rows_never_mix_domains():
    rng = np.random.default_rng(0)
    # domain 0 documents use ids 100..199, domain 1 ids 200..299: a mixed row would show both
    domains = rng.integers(0, 2, 60).tolist()
    docs = [rng.integers(100 + 100 * d, 200 + 100 * d, rng.integers(3, 30)).tolist() for d in domains]
    rows, counts, row_dom = _pack_by_domain(docs, domains, 16)
    assert rows.shape[0] == len(row_dom) == counts["rows"] and set(row_dom.tolist()) == {0, 1}
    for r, d in zip(rows, row_dom):
        ids = r[r != EOD]
        assert ((ids >= 100 + 100 * d) & (ids < 200 + 100 * d)).all()
    for d in (0, 1):  # every domain's tokens are packed in order, as pack_rows does for that domain alone
        mine = rows[row_dom == d]
        stream = [t for doc, k in zip(docs, domains) if k == d for t in doc + [EOD]]
        flat = np.concatenate([mine[0], *[r[1:] for r in mine[1:]]])
        assert flat.tolist() == stream[:len(flat)]
    rows2, _, none = _pack_by_domain(docs, None, 16)  # a dense job: one stream, no domain column
    assert none is None and len(rows2) >= len(rows) - 1


@pytest.fixture()
def sigma_job(tmp_path, pd_docs, trained_tokenizer):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(pd_docs[:40]), encoding="utf-8")
    (corpus / "b.txt").write_text("\n\n".join(pd_docs[40:80]), encoding="utf-8")
    save_tokenizer(trained_tokenizer, tmp_path / "tok")
    cfg = {"model": {"vocab_size": 2000, "seq_length": 32, "num_layers": 3, "hidden_size": 32, "ffn_hidden_size": 64,
                     "num_heads": 4, "dropout": 0.0},
           "tokenizer": {"path": str(tmp_path / "tok"), "vocab_size": 2000},
           "data": {"sources": [{"name": str(corpus / "a.txt"), "domain": "news"},
                                {"name": str(corpus / "b.txt"), "domain": "reviews"}],
                    "output_dir": str(tmp_path / "data"), "num_shards": 2, "heldout_fraction": 0.1,
                    "num_workers": 1},
           "experts": {"num_sparse_layers": 1, "domains": [{"name": "news", "experts": 2},
                                                           {"name": "reviews", "experts": 2}]}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def test_prepare_writes_domains_and_batches_carry_them(sigma_job):
    job = load_config(sigma_job)
    prepare(job)
    for split in ("train", "heldout"):
        data = ds.MindDataset(shard_files(job.data.output_dir, split), columns_list=[ROW_COLUMN, DOMAIN_COLUMN],
                              shuffle=False)
        doms = [int(r[DOMAIN_COLUMN]) for r in data.create_dict_iterator(output_numpy=True)]
        assert set(doms) == {0, 1}, split
    batches = build_dataset(shard_files(job.data.output_dir, "train"), seq_length=32, batch_size=4, eod_id=EOD,
                            domains=True, shuffle=True, seed=1)
    ids, pos, doc, dom = next(batches.create_tuple_iterator(output_numpy=True))
    assert ids.shape == (4, 33) and pos.shape == (4, 32) and doc.shape == (4, 32)
    assert dom.shape == (4,) and dom.dtype == np.int32 and set(dom.tolist()) <= {0, 1}


def test_a_source_without_a_known_domain_is_refused(sigma_job):
    job = load_config(sigma_job)
    sources = list(job.data.sources)
    sources[1] = dataclasses.replace(sources[1], domain="law")
    job = dataclasses.replace(job, data=dataclasses.replace(job.data, sources=sources))
    with pytest.raises(ConfigError, match=r"data.sources\[1\] \(.*b.txt\): domain='law' is not one of "
                                          r"experts.domains \(news, reviews\)"):
        prepare(job)


def test_pretrain_a_sigma_from_sigma_init(sigma_job, tmp_path):
    """prepare -> a dense checkpoint -> sigma init -> pretrain (host-side expert state) with
    train.init_from: the experts train, the routing tables come back untouched in its checkpoint."""
    import mindspore as ms

    from pangu_ms.checkpoint.sigma import read_model, write_model
    from pangu_ms.cli import main
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
    from pangu_ms.train.loop import pretrain

    job = load_config(sigma_job)
    prepare(job)
    ms.set_seed(3)
    dense = PanguAlphaWithLoss(job.model)
    write_model(tmp_path / "dense", dataclasses.replace(job, experts=None),
                {p.name: p.asnumpy() for p in dense.get_parameters()}, step=0, tokenizer_dir=None)
    assert main(["sigma", "init", "--from", str(tmp_path / "dense"), "--config", str(sigma_job),
                 "--out", str(tmp_path / "init")]) == 0
    overrides = [f"train.init_from={tmp_path / 'init'}", "train.steps=3", "train.global_batch_size=2",
                 "train.eval_every=3", "train.eval_batches=1", f"run.output_dir={tmp_path / 'run'}",
                 "experts.host_expert_state=true", "schedule.warmup_steps=1"]
    summary = pretrain(load_config(sigma_job, overrides), progress=False)
    assert summary["steps"] == 3 and np.isfinite(summary["final_train_loss"])
    _, _, init, _ = read_model(tmp_path / "init")
    _, _, trained, _ = read_model(tmp_path / "run")
    routes = [k for k in init if k.endswith(".route")]
    assert routes and all(np.array_equal(init[k], trained[k]) for k in routes)
    moved = [k for k in init if ".ffn.expert_w1" in k and not np.array_equal(init[k], trained[k])]
    assert moved  # the experts did train


@pytest.mark.parametrize("host", [True, False], ids=["host_state", "device_state"])
def test_a_resumed_sigma_run_equals_the_uninterrupted_one(sigma_job, tmp_path, host):
    """Resuming at step 2 of 4 gives the uninterrupted run's weights bit for bit, with the expert
    AdamW on the device or on the host (whose moments and step count the checkpoint must carry:
    without them a resumed run restarts them from zero and diverges)."""
    import shutil

    from pangu_ms.checkpoint.sigma import read_model
    from pangu_ms.train.loop import pretrain
    from pangu_ms.train.sigma import build_sigma_trainer

    prepare(load_config(sigma_job))
    common = ["train.steps=4", "train.global_batch_size=2", "train.eval_every=0", "checkpoint.every_steps=2",
              "checkpoint.keep_last=3", f"experts.host_expert_state={str(host).lower()}", "schedule.warmup_steps=1"]
    whole = tmp_path / "whole"
    pretrain(load_config(sigma_job, common + [f"run.output_dir={whole}"]), progress=False)
    part = tmp_path / "part"
    shutil.copytree(whole, part)
    shutil.rmtree(part / "checkpoints" / "step_00000004")
    summary = pretrain(load_config(sigma_job, common + [f"run.output_dir={part}"]), resume=str(part), progress=False)
    assert summary["steps"] == 4
    _, _, a, _ = read_model(whole)
    _, _, b, _ = read_model(part)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "weights differ after resume"
    # what carried it: the host state is part of the train Cell that checkpoints save
    _, trainer = build_sigma_trainer(load_config(sigma_job, common))
    names = {p.name for p in trainer.cell.get_parameters()}
    assert ("host_adam_step" in names and any(n.startswith("host_adam_m.") for n in names)) == host
