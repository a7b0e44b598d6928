"""generate / eval / finetune commands end to end on a tiny checkpoint, and LoRA merging."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_model_config
from pangu_ms.cli import main
from pangu_ms.config import JobConfig, TokenizerConfig
from pangu_ms.models.pangu_alpha import PanguAlphaLM, PanguAlphaWithLoss


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory with one checkpoint of a random tiny model and a small real tokenizer."""
    from pangu_ms.data.packing import pack_rows, write_shards
    from pangu_ms.data.labelled import sentiment_splits
    from pangu_ms.tokenizer import segment_batch, train_tokenizer
    from pangu_ms.train.checkpoint import save

    root = tmp_path_factory.mktemp("run")
    texts = [e.text for e in sentiment_splits()["train"][:1500]]
    tok_cfg = TokenizerConfig(path=str(root / "tok"), vocab_size=2500, character_coverage=0.99)
    tok = train_tokenizer(tok_cfg, root / "tok", segmented=segment_batch(texts, 1))
    job = JobConfig(model=tiny_model_config(vocab_size=tok.vocab_size, seq_length=64), tokenizer=tok_cfg)
    job.run.output_dir = str(root / "pretrain")
    job.data.output_dir = str(root / "data")  # a held-out split as prepare writes it
    heldout = [tok.encode(e.text) for e in sentiment_splits()["test"][:60]]
    rows, _ = pack_rows(heldout, 64, tok.eod_id)
    write_shards(rows, root / "data", "heldout", 2)
    (root / "data" / "manifest.json").write_text("{}", encoding="utf-8")
    ms.set_seed(3)
    save(job.run.output_dir, PanguAlphaWithLoss(job.model), step=1, data_step=0, tokens_seen=0, job=job)
    return root


def _cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_generate_json_greedy_reproducible(tiny_run, capsys, tmp_path):
    inp = tmp_path / "p.jsonl"
    inp.write_text('{"prompt": "这个手机很好"}\n{"prompt": "质量太差"}\n', encoding="utf-8")
    args = ["generate", "--ckpt", str(tiny_run / "pretrain"), "--input", str(inp), "--max-new-tokens", "6",
            "--temperature", "0", "--batch-size", "2", "--json", "--stop-id", "6"]
    first = [json.loads(line) for line in _cli(capsys, *args).splitlines()]
    assert [r["prompt"] for r in first] == ["这个手机很好", "质量太差"]
    assert all(r["new_tokens"] <= 6 and r["finish_reason"] in ("length", "stop") for r in first)
    assert [json.loads(line) for line in _cli(capsys, *args).splitlines()] == first


def test_generate_streams_prompt_and_text(tiny_run, capsys):
    out = _cli(capsys, "generate", "--ckpt", str(tiny_run / "pretrain"), "--prompt", "服务", "--max-new-tokens", "4",
               "--seed", "1", "--top-k", "5")
    assert out.startswith("服务") and out.endswith("\n")


def test_eval_sentiment_zero_and_few_shot(tiny_run, capsys):
    for shots in ("0", "2"):
        r = json.loads(_cli(capsys, "eval", "--ckpt", str(tiny_run / "pretrain"), "--task", "sentiment",
                            "--shots", shots, "--limit", "8", "--json"))
        assert r["n"] == 8 and r["shots"] == int(shots) and 0.0 <= r["accuracy"] <= 1.0


def test_eval_perplexity_of_a_text_file(tiny_run, capsys, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("很好的手机，物流也快。\n\n质量不行，退货了。", encoding="utf-8")
    task = tmp_path / "ppl.yaml"
    task.write_text(f"type: perplexity\ndataset: {corpus}\n", encoding="utf-8")
    r = json.loads(_cli(capsys, "eval", "--ckpt", str(tiny_run / "pretrain"), "--task", str(task), "--json"))
    # a random model over V tokens is close to uniform
    assert r["tokens"] > 5 and 0.3 * 2500 < r["perplexity"] < 3 * 2500


def test_eval_heldout_perplexity_equals_model_loss(tiny_run, capsys):
    """exp(the model's own mean training loss over the held-out rows, eod-reset documents)."""
    import mindspore.dataset as ds

    from pangu_ms.data.dataset import eod_reset
    from pangu_ms.data.shards import shard_files
    from pangu_ms.kernels.reference import TiedHeadCrossEntropy
    from pangu_ms.train.checkpoint import load_for_inference

    r = json.loads(_cli(capsys, "eval", "--ckpt", str(tiny_run / "pretrain"), "--task", "heldout_ppl", "--json"))
    job, lm, _ = load_for_inference(tiny_run / "pretrain")
    data = ds.MindDataset(shard_files(job.data.output_dir, "heldout"), shuffle=False)
    rows = np.stack([d["input_ids"] for d in data.create_dict_iterator(num_epochs=1, output_numpy=True)])
    pos, doc = eod_reset(rows, job.model.eod_id)
    h = lm.backbone(Tensor(rows[:, :-1]), Tensor(pos), Tensor(doc))
    table = lm.backbone.word_embedding.embedding_table
    loss = TiedHeadCrossEntropy(job.model.pad_id)(h, table, Tensor(rows[:, 1:].reshape(-1))).asnumpy()
    assert r["rows"] == len(rows) and r["tokens"] == rows[:, 1:].size
    assert r["perplexity"] == pytest.approx(float(np.exp(loss)), rel=1e-4)


def test_finetune_lora_then_eval_checkpoint(tiny_run, capsys):
    out_dir = tiny_run / "ft"
    r = json.loads(_cli(capsys, "finetune", "--config", "ascend_configs/runs/pangu_alpha_tiny_finetune.yaml",
                        "--set", f"finetune.init={tiny_run / 'pretrain'}", "--set", "finetune.method=lora",
                        "--set", "finetune.steps=8", "--set", "schedule.warmup_steps=1", "--set", "finetune.batch_size=4", "--set",
                        "finetune.max_tokens=48", "--set", "finetune.eval_limit=6", "--set", "finetune.eval_shots=1",
                        "--set", "finetune.train_examples=40", "--set", f"run.output_dir={out_dir}", "--json"))
    assert [b["shots"] for b in r["before"]] == [0, 1] and r["after"][0]["n"] == 6
    assert r["trainable_params"] == 3 * 4 * 2 * 8 * 32  # 3 layers x 4 projections x (A + B)
    assert (out_dir / "finetune_results.json").is_file()
    assert r["ema_updates"] == 2 and r["dropout"] == 0.1  # the average of steps 4 and 8 is evaluated and saved
    ev = json.loads(_cli(capsys, "eval", "--ckpt", str(out_dir), "--task", "sentiment", "--limit", "6", "--json"))
    assert ev["accuracy"] == pytest.approx(r["after"][0]["accuracy"])


class _Fresh(ms.nn.Cell):
    """A new top-level Cell around the model: compiles the model's current structure."""

    def __init__(self, lm):
        super().__init__(auto_prefix=False)
        self.lm = lm

    def construct(self, *args):
        return self.lm(*args)


def test_lora_starts_at_base_and_merges_exactly():
    from pangu_ms.finetune.lora import apply_lora, merge_lora

    ms.set_seed(5)
    lm = PanguAlphaLM(tiny_model_config())
    lm.set_train(False)
    names = [p.name for p in lm.get_parameters()]
    s = 16
    args = (Tensor(np.arange(10, 10 + s, dtype=np.int32)[None]), Tensor(np.arange(s, dtype=np.int32)[None]),
            Tensor(np.zeros((1, s), np.int32)))  # one document: causal
    base = _Fresh(lm)(*args).asnumpy()
    trainable = apply_lora(lm, rank=2, alpha=4.0)
    assert not any(p.requires_grad for p in lm.get_parameters() if "lora" not in p.name)
    assert {p.name for p in trainable} <= {p.name for p in lm.trainable_params()}
    adapted_net = _Fresh(lm)
    np.testing.assert_allclose(adapted_net(*args).asnumpy(), base, atol=1e-6)  # B = 0: unchanged
    rng = np.random.default_rng(0)
    for p in trainable:
        if p.name.endswith("lora_b"):
            p.set_data(Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
    adapted = adapted_net(*args).asnumpy()  # same graph, new adapter values
    assert np.abs(adapted - base).max() > 1e-3
    merge_lora(lm)
    assert [p.name for p in lm.get_parameters()] == names
    np.testing.assert_allclose(_Fresh(lm)(*args).asnumpy(), adapted, atol=1e-4)
