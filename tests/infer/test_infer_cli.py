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


def _greedy_reference(lm, prompt: list[int], n: int, stop: int) -> list[int]:
    """Greedy tokens by full recompute with the training model (no cache, no decoder): the
    prefix right-padded to seq_length as one document (causal attention), argmax at its last position."""
    s = lm.config.seq_length
    pos = Tensor(np.arange(s, dtype=np.int32)[None])
    mask = Tensor(np.zeros((1, s), np.int32))  # document ids: the whole row is one document
    seq, out = list(prompt), []
    for _ in range(n):
        ids = np.full((1, s), 6, np.int32)
        ids[0, :len(seq)] = seq
        tok = int(lm(Tensor(ids), pos, mask).asnumpy()[len(seq) - 1].argmax())
        if tok == stop:
            break
        out.append(tok)
        seq.append(tok)
    return out


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from pangu_ms.train.checkpoint import load_for_inference

    return load_for_inference(tiny_run / "pretrain")


def test_greedy_generate_equals_full_recompute_of_the_checkpoint(tiny_run, loaded, capsys, tmp_path):
    """--prompt and a batched, ragged --input: each completion is the decoded greedy tokens of
    a full recompute with the same checkpoint's model."""
    job, lm, tok = loaded
    prompts = ["这个手机很好", "质量太差，不推荐购买"]
    ref = {p: _greedy_reference(lm, tok.encode(p), 10, tok.eod_id) for p in prompts}
    assert any(ref.values())
    out = json.loads(_cli(capsys, "generate", "--ckpt", str(tiny_run / "pretrain"), "--prompt", prompts[0],
                          "--max-new-tokens", "10", "--temperature", "0", "--json").splitlines()[-1])
    assert out["completion"] == tok.decode(ref[prompts[0]]) and out["new_tokens"] == len(ref[prompts[0]])
    inp = tmp_path / "p.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    rows = [json.loads(x) for x in _cli(capsys, "generate", "--ckpt", str(tiny_run / "pretrain"), "--input", str(inp),
                                        "--max-new-tokens", "10", "--temperature", "0", "--batch-size", "2",
                                        "--json").splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        assert r["completion"] == tok.decode(ref[r["prompt"]]), r["prompt"]
        assert r["new_tokens"] == len(ref[r["prompt"]])
        assert r["finish_reason"] == ("stop" if len(ref[r["prompt"]]) < 10 else "length")


class _Terminal:
    """stdout stand-in recording writes and flushes, and which decoder step they came before."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        return len(text)

    def flush(self) -> None:
        self.events.append(("flushed", self.pending))
        self.pending = ""

    def step(self) -> None:
        self.events.append(("step", self.pending))


def test_streaming_flushes_each_token_before_the_next_is_computed(tiny_run, loaded, monkeypatch):
    """`generate --prompt` (not --json): the prompt, then each token's text reaches the
    terminal (written and flushed) before the decoder computes the next token; a token that
    ends inside a multi-byte character waits for the rest of it."""
    from pangu_ms.cli import main
    from pangu_ms.infer.decoder import IncrementalDecoder

    job, lm, tok = loaded
    prompt = "服务"
    ref = _greedy_reference(lm, tok.encode(prompt), 8, tok.eod_id)
    term = _Terminal()
    real_step = IncrementalDecoder.step

    def step(self, tokens):
        term.step()
        return real_step(self, tokens)

    monkeypatch.setattr(IncrementalDecoder, "step", step)
    monkeypatch.setattr("sys.stdout", term)
    assert main(["generate", "--ckpt", str(tiny_run / "pretrain"), "--prompt", prompt, "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    flushed = [text for kind, text in term.events if kind == "flushed"]
    assert flushed[0] == prompt and "".join(flushed) + term.pending == prompt + tok.decode(ref) + "\n"
    assert all(pending == "" for kind, pending in term.events if kind == "step")  # nothing waits unflushed
    # between consecutive steps: exactly the new text of that token (held back if incomplete)
    per_token, shown = [], ""
    for k in range(1, len(ref) + 1):
        text = tok.decode(ref[:k])
        done = not text.endswith("\ufffd") and text.startswith(shown)
        per_token.append(text[len(shown):] if done else "")
        shown = text if done else shown
    segments, current = [], []
    for kind, text in term.events[1:]:  # after the prompt
        if kind == "step":
            segments.append("".join(current))
            current = []
        else:
            current.append(text)
    segments.append("".join(current))
    assert sum(map(bool, per_token)) >= 3, per_token  # enough visible tokens for the check to mean something
    assert segments[:len(ref)] == per_token, (segments, per_token)


def test_eval_accuracy_equals_classify_on_the_same_model(tiny_run, loaded, capsys):
    """The command's result, confusion matrix included, is the library's `classify()` on the
    checkpoint's model with the same task, limit and shots."""
    from pangu_ms.eval.runner import classify
    from pangu_ms.eval.scoring import Scorer
    from pangu_ms.eval.tasks import load_task

    job, lm, tok = loaded
    for shots in (0, 2):
        r = json.loads(_cli(capsys, "eval", "--ckpt", str(tiny_run / "pretrain"), "--task", "sentiment",
                            "--shots", str(shots), "--limit", "12", "--json"))
        task = load_task("sentiment")
        task.limit = 12
        want = classify(task, Scorer(lm, batch_size=8), tok, shots)
        assert r["n"] == 12 and r["shots"] == shots
        for key in ("accuracy", "n", "confusion", "per_label"):
            assert r[key] == want[key], (shots, key, r[key], want[key])


def test_eval_perplexity_of_a_text_file_equals_the_models_loss(tiny_run, loaded, capsys, tmp_path):
    """exp(mean NLL of the file's packed tokens) computed from the model's logits in NumPy."""
    from pangu_ms.data.dataset import eod_reset
    from pangu_ms.data.packing import pack_rows

    job, lm, tok = loaded
    docs = ["很好的手机，物流也快。", "质量不行，退货了。"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(docs), encoding="utf-8")
    task = tmp_path / "ppl.yaml"
    task.write_text(f"type: perplexity\ndataset: {corpus}\n", encoding="utf-8")
    r = json.loads(_cli(capsys, "eval", "--ckpt", str(tiny_run / "pretrain"), "--task", str(task), "--json"))
    rows, _ = pack_rows([tok.encode(d) for d in docs], job.model.seq_length, tok.eod_id, pad_id=job.model.pad_id)
    pos, mask = eod_reset(rows, tok.eod_id)
    logits = lm(Tensor(rows[:, :-1]), Tensor(pos), Tensor(mask)).asnumpy().astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    labels = rows[:, 1:].reshape(-1)
    keep = labels != job.model.pad_id
    nll = -logp[np.arange(len(labels)), labels][keep]
    assert r["tokens"] == int(keep.sum()) == sum(len(tok.encode(d)) + 1 for d in docs) - 1
    assert r["perplexity"] == pytest.approx(float(np.exp(nll.mean())), rel=1e-5)


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
