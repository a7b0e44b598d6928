"""PanGu-Coder training: stage-2 shards carry the CODE-CLM mask, the masked loss against NumPy,
and stage 1 -> stage 2 through `python -m pangu_ms pretrain` (stage 2 starts from stage 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import Tensor, ops

from pangu_ms.config import ModelConfig, load_config

TINY = dict(vocab_size=2000, seq_length=64, num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4,
            dropout=0.0)

# hand-built files: each function's code without its docstring, as the test expects it back
FILES = {
    "a.py": 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n\n\n'
            'class Box:\n    def get(self, key, default=None):\n        """Look key up.\n\n'
            '        Returns default when missing.\n        """\n        # a comment stays\n'
            '        return self.data.get(key, default)\n',
    "b.py": "import os\n\n\ndef join_all(parts):\n    '''Join path parts.'''\n    out = \"\"\n"
            "    for p in parts:\n        out = os.path.join(out, p)\n    return out\n",
}
CODE = {  # worked out by hand from FILES
    "add": "def add(a, b):\n    return a + b\n",
    "get": "def get(self, key, default=None):\n    # a comment stays\n    return self.data.get(key, default)\n",
    "join_all": 'def join_all(parts):\n    out = ""\n    for p in parts:\n        out = os.path.join(out, p)\n'
                "    return out\n",
}
DOCS = {"add": "Return the sum of a and b.", "get": "Look key up.\n\nReturns default when missing.",
        "join_all": "Join path parts."}


def code_job(root: Path, tok_dir: Path, out: str, *extra: str):
    src = root / "src"
    src.mkdir(exist_ok=True)
    for name, text in FILES.items():
        (src / name).write_text(text, encoding="utf-8")
    return load_config(None, [f"model.{k}={v}" for k, v in TINY.items()] + [
        "tokenizer.kind=code", "tokenizer.normalization=identity", f"tokenizer.path={tok_dir}",
        f"data.sources=[{{name: 'python:{src}'}}]", f"data.output_dir={root / out}", "data.num_shards=2",
        "code.decontaminate=false", "code.heldout_fraction=0.0", *extra])


def read_split(out: Path, split: str = "train") -> dict[str, np.ndarray]:
    import mindspore.dataset as ds

    from pangu_ms.data.shards import shard_files

    data = ds.MindDataset(shard_files(out, split), columns_list=["input_ids", "loss_mask", "pair_id"], shuffle=False)
    rows = list(data.create_dict_iterator(num_epochs=1, output_numpy=True))
    return {k: np.stack([r[k] for r in rows]) for k in ("input_ids", "loss_mask", "pair_id")}


# ---------------------------------------------------------------------------------- shards
def test_stage2_shards_hold_the_code_clm_mask_of_every_pair(tmp_path, code_tokenizer_dir, code_tokenizer):
    from pangu_ms.data.dataset import build_dataset
    from pangu_ms.data.prepare import prepare
    from pangu_ms.data.shards import shard_files

    tok = code_tokenizer
    job = code_job(tmp_path, code_tokenizer_dir, "data", "code.stage=code_clm")
    manifest = prepare(job)
    assert manifest["columns"] == ["input_ids", "loss_mask", "pair_id"]
    assert manifest["rows"] == "code_pairs" and manifest["tokenizer"]["kind"] == "code"
    cols = read_split(tmp_path / "data")
    ids, mask, pair = cols["input_ids"], cols["loss_mask"], cols["pair_id"]
    assert ids.shape[1] == 65 and mask.shape[1] == 64 and pair.shape == ids.shape
    found = {}
    for r in range(len(ids)):
        for k in sorted(set(pair[r].tolist()) - {-1}):
            where = np.flatnonzero(pair[r] == k)
            seg = ids[r, where]
            assert np.all(np.diff(where) == 1), "a pair is contiguous in its row"
            # tagged layout by hand: <comments> docstring <python> code <eot> <eod>
            assert seg[0] == tok.comments_id and seg[-2] == tok.eot_id and seg[-1] == tok.eod_id
            p = int(np.flatnonzero(seg == tok.python_id)[0])
            doc, code = tok.decode(seg[1:p]), tok.decode(seg[p + 1:-2])
            name = next(n for n in CODE if CODE[n] == code)
            assert doc == DOCS[name]
            # label j is id j+1: its flag is mask[j]; targets are exactly code + <eot>
            flags = mask[r, where[1:] - 1]  # the flags of seg[1:]
            expect = np.r_[np.zeros(p, np.float32), np.ones(len(seg) - p - 2, np.float32), 0.0]
            assert flags.tolist() == expect.tolist(), name
            if where[0] > 0:  # the label that starts this pair (<comments>) is no target
                assert mask[r, where[0] - 1] == 0
            found[name] = tok.decode(ids[r, where[1:]][flags > 0])
    assert found == CODE  # every pair once; its targets decode to its code exactly (<eot> decodes to nothing)
    assert float(mask.sum()) == sum(len(tok.encode(c)) + 1 for c in CODE.values())
    assert np.all(mask[pair[:, 1:] < 0] == 0), "padding carries no loss"
    # the pipeline passes the mask through, aligned with its row
    data = build_dataset(shard_files(tmp_path / "data"), seq_length=64, batch_size=1, eod_id=8, shuffle=False,
                         loss_mask=True)
    for i, (row, pos, att, m) in enumerate(data.create_tuple_iterator(num_epochs=1, output_numpy=True)):
        assert np.array_equal(row[0], ids[i]) and np.array_equal(m[0], mask[i])
        # <eod> after each pair: positions restart at every pair
        starts = np.flatnonzero(row[0, :-1] == tok.comments_id)
        assert np.all(pos[0, starts] == 0)


def test_docstring_masking_hides_the_share_asked_for_of_each_docstring(tmp_path, code_tokenizer_dir, code_tokenizer):
    """code.docstring_mask: in every training pair round(share x d) of its d docstring ids become
    <mask>; the code, the tags and the loss mask stay as without it; the report counts them."""
    from pangu_ms.data.prepare import prepare

    tok = code_tokenizer
    job = code_job(tmp_path, code_tokenizer_dir, "data", "code.stage=code_clm", "code.docstring_mask=0.5")
    prepare(job)
    cols = read_split(tmp_path / "data")
    ids, mask, pair = cols["input_ids"], cols["loss_mask"], cols["pair_id"]
    total = 0
    for r in range(len(ids)):
        for k in sorted(set(pair[r].tolist()) - {-1}):
            seg = ids[r, pair[r] == k]
            p = int(np.flatnonzero(seg == tok.python_id)[0])
            doc_ids, code = seg[1:p], tok.decode(seg[p + 1:-2])
            name = next(n for n in CODE if CODE[n] == code)  # the code is untouched
            d = len(tok.encode(DOCS[name]))
            assert len(doc_ids) == d and int((doc_ids == tok.mask_id).sum()) == round(0.5 * d), name
            kept = doc_ids != tok.mask_id
            assert np.array_equal(doc_ids[kept], np.array(tok.encode(DOCS[name]))[kept]), name
            total += round(0.5 * d)
    assert float(mask.sum()) == sum(len(tok.encode(c)) + 1 for c in CODE.values())
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert report["packing"]["train"]["docstring_ids_masked"] == total > 0


def test_stage1_code_shards_are_whole_files_without_a_mask(tmp_path, code_tokenizer_dir, code_tokenizer):
    from pangu_ms.data.prepare import prepare

    manifest = prepare(code_job(tmp_path, code_tokenizer_dir, "data1"))
    assert manifest["columns"] == ["input_ids"] and manifest["rows"] == "code_files"
    import mindspore.dataset as ds

    from pangu_ms.data.shards import shard_files

    rows = np.stack([r["input_ids"] for r in ds.MindDataset(shard_files(tmp_path / "data1"), shuffle=False)
                     .create_dict_iterator(num_epochs=1, output_numpy=True)])
    stream = np.r_[rows[0], *[r[1:] for r in rows[1:]]]  # rows overlap by one id
    docs = [code_tokenizer.decode(d) for d in np.split(stream, np.flatnonzero(stream == 8) + 1)]
    # the files survive the (CJK-filtering) Chinese cleaning untouched: every complete one is exact
    assert sum(d in FILES.values() for d in docs) >= 1 and all(d in FILES.values() for d in docs[:-1])


def test_code_sources_need_the_code_tokenizer(tmp_path, code_tokenizer_dir):
    from pangu_ms.data.prepare import prepare
    from pangu_ms.errors import DataError

    job = code_job(tmp_path, code_tokenizer_dir, "d", "tokenizer.kind=pangu")
    with pytest.raises(DataError, match="tokenizer.kind: code"):
        prepare(job)


# ---------------------------------------------------------------------------------- masked loss
def _np_loss(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, pad: int) -> float:
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    w = (labels != pad) * mask
    return float(-(logp[np.arange(len(labels)), labels] * w).sum() / max(w.sum(), 1.0))


class _Grads(ms.nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net, self.weights = net, ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, *inputs):
        return self.net(*inputs), self.grad(self.net, self.weights)(*inputs)


def test_masked_loss_network_ignores_masked_tokens():
    from pangu_ms.data.dataset import eod_reset
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, PanguAlphaWithMaskedLoss

    cfg = ModelConfig(vocab_size=64, seq_length=16, num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4,
                      dropout=0.0)
    ms.set_seed(3)
    net = PanguAlphaWithMaskedLoss(cfg)
    rng = np.random.default_rng(1)
    rows = rng.integers(10, 64, (2, 17)).astype(np.int32)
    rows[1, 7] = cfg.pad_id  # a padding label inside the flagged part: never scored either
    mask = np.ones((2, 16), np.float32)
    mask[0, :4] = 0  # a docstring: labels 0-3 are inputs of later positions but never targets
    mask[:, 11:] = 0  # a masked tail: ids 12..16 are labels 11..15, inputs only of masked positions
    pos, att = eod_reset(rows, 8)

    step = _Grads(net)  # one compiled graph for every call below

    def run(r, m):
        loss, grads = step(Tensor(r), Tensor(pos), Tensor(att), Tensor(m))
        return float(loss.asnumpy()), [g.asnumpy() for g in grads]

    loss, grads = run(rows, mask)
    logits = net.lm(Tensor(rows[:, :16]), Tensor(pos), Tensor(att)).asnumpy()
    assert loss == pytest.approx(_np_loss(logits, rows[:, 1:].reshape(-1), mask.reshape(-1), cfg.pad_id), rel=1e-5)
    changed = rows.copy()
    changed[:, 12:] = rng.integers(10, 64, (2, 5))
    loss2, grads2 = run(changed, mask)
    assert loss2 == pytest.approx(loss, abs=1e-6)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, atol=1e-7)
    # the test can fail: unmasking one of the changed labels changes the loss
    unmasked = mask.copy()
    unmasked[0, 11] = 1
    assert abs(run(changed, unmasked)[0] - run(rows, unmasked)[0]) > 1e-4
    # an all-ones mask is the plain loss (same weights), gradients included
    plain = PanguAlphaWithLoss(cfg)
    ms.load_param_into_net(plain, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in net.trainable_params()})
    ones = np.ones_like(mask)
    loss_p, grads_p = _Grads(plain)(Tensor(rows), Tensor(pos), Tensor(att))
    loss_o, grads_o = run(rows, ones)
    assert loss_o == pytest.approx(float(loss_p.asnumpy()), rel=1e-6)
    for a, b in zip(grads_o, grads_p):
        np.testing.assert_allclose(a, b.asnumpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------- stage 1 -> stage 2
def _pretrain(config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pangu_ms", "pretrain", "--config", str(config), "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def _run_config(path: Path, job, run_dir: Path, **train) -> Path:
    tree = {"model": TINY, "tokenizer": {"kind": "code", "normalization": "identity", "path": job.tokenizer.path},
            "data": {"output_dir": job.data.output_dir, "sources": [{"name": job.data.sources[0].name}]},
            "code": {"stage": job.code.stage, "decontaminate": False, "heldout_fraction": job.code.heldout_fraction},
            "optimizer": {"lr": 3e-3, "min_lr": 3e-4}, "schedule": {"warmup_steps": 1},
            "checkpoint": {"every_steps": 10, "keep_last": 1},
            "train": {"steps": 3, "global_batch_size": 1, "eval_every": 2, "eval_batches": 1, "log_every": 1,
                      **train},
            "run": {"output_dir": str(run_dir), "seed": 5}}
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


@pytest.mark.e2e
def test_stage2_starts_from_stage1_through_pretrain(tmp_path, code_tokenizer_dir):
    from pangu_ms.data.prepare import prepare
    from pangu_ms.tokenizer import CodeTokenizer
    from pangu_ms.train.checkpoint import load_for_inference
    from pangu_ms.train.metrics import read_metrics

    tok_dir = tmp_path / "tok"
    import shutil

    shutil.copytree(code_tokenizer_dir, tok_dir)
    split = "code.heldout_fraction=0.45"  # with code.split_seed 0: b.py is held out, a.py trains
    job1 = code_job(tmp_path, tok_dir, "data1", split)
    job2 = code_job(tmp_path, tok_dir, "data2", "code.stage=code_clm", split)
    prepare(job1)
    prepare(job2)
    one = _pretrain(_run_config(tmp_path / "s1.yaml", job1, tmp_path / "stage1"))
    assert one.returncode == 0, one.stderr[-3000:]
    s1 = json.loads((tmp_path / "stage1" / "summary.json").read_text())
    two = _pretrain(_run_config(tmp_path / "s2.yaml", job2, tmp_path / "stage2", steps=2,
                                init_from=str(tmp_path / "stage1")))
    assert two.returncode == 0, two.stderr[-3000:]
    events = read_metrics(tmp_path / "stage2" / "metrics.jsonl")
    init = [e for e in events if e["kind"] == "init"]
    assert len(init) == 1 and init[0]["weights_crc32"] == s1["weights_crc32"]  # stage 1's final weights, bitwise
    s2 = json.loads((tmp_path / "stage2" / "summary.json").read_text())
    assert s2["steps"] == 2 and np.isfinite(s2["final_train_loss"]) and s2["weights_crc32"] != s1["weights_crc32"]
    # the checkpoint carries its code tokenizer: loading it gives the code kind back
    job, lm, tok = load_for_inference(tmp_path / "stage2")
    assert isinstance(tok, CodeTokenizer)
    # held-out code loss two ways: the training loop's masked loss network, and the eval runner's
    # scorer over the held-out pair rows of data2 counting the masked labels only
    from pangu_ms.eval.runner import evaluate
    from pangu_ms.eval.tasks import TaskConfig

    heldout = [e for e in events if e["kind"] == "eval"][-1]
    assert heldout["step"] == 2
    got = evaluate(TaskConfig(name="pairs", type="perplexity", dataset=str(tmp_path / "data2")), job, lm, tok)
    assert got["masked"] and got["tokens"] == len(tok.encode(CODE["join_all"])) + 1
    assert got["loss"] == pytest.approx(heldout["heldout_loss"], rel=1e-4)
    # a stage-2 start from a checkpoint of another shape, or of another tokenizer, is one clear error
    from pangu_ms.errors import CheckpointError
    from pangu_ms.models.pangu_alpha import PanguAlphaWithMaskedLoss
    from pangu_ms.train.checkpoint import init_weights

    wide = ModelConfig(**{**TINY, "hidden_size": 64})
    with pytest.raises(CheckpointError, match="does not fit"):
        init_weights(PanguAlphaWithMaskedLoss(wide), tmp_path / "stage1", job2)
    manifest = json.loads((tmp_path / "data2" / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (tmp_path / "data2" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="another tokenizer"):
        init_weights(PanguAlphaWithMaskedLoss(ModelConfig(**TINY)), tmp_path / "stage1", job2)


def test_stage2_ascend_step_shards_the_loss_mask_like_the_other_inputs(tmp_path):
    """Stage 2 on Ascend (semi-auto parallel, not compiled on CPU): the masked loss network is
    built without weights, its dataset strategy splits all four inputs dp-way, and the label
    masking ops are sharded over the batch and placed on the last pipeline stage with the loss."""
    from pangu_testing import tiny_model_config
    from pangu_ms.config import JobConfig, ParallelConfig, TrainConfig
    from pangu_ms.models.pangu_alpha import PanguAlphaWithMaskedLoss
    from pangu_ms.parallel.context import ParallelInfo, read_auto_parallel
    from pangu_ms.parallel.layout import RankLayout
    from pangu_ms.parallel.readback import read_stages, read_strategies
    from pangu_ms.train.ascend import build_ascend_trainer

    p = ParallelConfig(dp=2, mp=2, pp=2, micro_batches=4, optimizer_shard=True, vocab_emb_dp=False)
    c = RankLayout(dp=2, mp=2, pp=2).coords(5)
    info = ParallelInfo(rank=5, world_size=8, dp_rank=c.dp, dp_size=2, is_distributed=True, stage=c.stage,
                        mp_rank=c.mp, mode="semi_auto_parallel", parallel=p)
    job = JobConfig(model=tiny_model_config(), parallel=p, train=TrainConfig(global_batch_size=16))
    eval_net, trainer = build_ascend_trainer(job, info, strategy_dir=str(tmp_path), masked=True)
    assert read_auto_parallel(trainer.cell)["dataset_strategy"] == ((2, 1),) * 4
    net = eval_net.network
    assert isinstance(net, PanguAlphaWithMaskedLoss)
    strategies = read_strategies(net)
    assert strategies["label_mask.select"] == [[2], [2], [2]] and strategies["label_mask.ones_like"] == [[2]]
    stages = read_stages(net)
    assert stages["label_mask"] == stages["loss"] == 1
