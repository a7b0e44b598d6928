"""Evaluation: continuation scoring vs the model, the perplexity decision rule, prompts, metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_lm_model
from pangu_ms.errors import ConfigError, DataError
from pangu_ms.eval import metrics
from pangu_ms.data.labelled import Example, sentiment_splits
from pangu_ms.eval.runner import DemoSampler, build_prompt, classify, generate_task
from pangu_ms.eval.scoring import Scorer
from pangu_ms.eval.tasks import TaskConfig, load_task

SEQ = 32


class CharTokenizer:
    """Test stand-in for PanguTokenizer: one id per character (ids 10..V-1)."""

    eod_id, pad_id = 8, 6

    def __init__(self, vocab: int = 96):
        self.vocab, self.to_char = vocab, {}

    def encode(self, text: str) -> list[int]:
        ids = [10 + ord(c) % (self.vocab - 10) for c in text]
        self.to_char.update(zip(ids, text))
        return ids

    def decode(self, ids) -> str:
        return "".join(self.to_char.get(int(i), "?") for i in ids if int(i) >= 10)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm_model(SEQ, seed=11)


@pytest.fixture(scope="module")
def scorer(lm):
    return Scorer(lm, batch_size=4, length_bucket=8)


def _reference_logprobs(lm, seq: list[int]) -> np.ndarray:
    """log p(seq[t] | seq[:t]) from an unpadded forward of the model, log-softmax in NumPy."""
    s = len(seq) - 1
    ids = Tensor(np.array([seq[:-1]], np.int32))
    pos = Tensor(np.arange(s, dtype=np.int32)[None])
    doc = Tensor(np.zeros((1, s), np.int32))  # one document: a plain causal mask
    logits = lm(ids, pos, doc).asnumpy().astype(np.float64)  # [s, V]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return logp[np.arange(s), seq[1:]]


def test_continuation_logprobs_match_model(lm, scorer):
    rng = np.random.default_rng(0)
    items = [(list(rng.integers(10, 96, n)), list(rng.integers(10, 96, m))) for n, m in [(3, 1), (7, 2), (12, 4), (1, 3), (5, 1)]]
    got = scorer.continuation_logprobs(items)
    for (ctx, cont), lp in zip(items, got):
        ref = _reference_logprobs(lm, ctx + cont)[-len(cont):]
        np.testing.assert_allclose(lp, ref, atol=1e-5)


def test_long_context_is_cut_from_the_left(lm, scorer):
    ctx, cont = list(range(10, 60)), [70, 71]
    (lp,) = scorer.continuation_logprobs([(ctx, cont)])
    kept = (ctx + cont)[-(SEQ + 1):]
    np.testing.assert_allclose(lp, _reference_logprobs(lm, kept)[-2:], atol=1e-5)


class FixedScorer:
    """Returns preset continuation log-probs keyed by the continuation's token ids."""

    def __init__(self, table: dict[tuple, list[float]]):
        self.table, self.seen = table, []

    def continuation_logprobs(self, items):
        self.seen.extend(items)
        return [np.array(self.table[tuple(c)]) for _, c in items]


def _task(tmp_path, rows, **kw) -> TaskConfig:
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return TaskConfig(name="t", dataset=str(f), template="{text}=>{label}", labels=kw.pop("labels"), **kw)


def test_lowest_mean_perplexity_wins(tmp_path):
    """Label 'b' has the larger total log-prob loss but the lower per-token loss: it wins."""
    tok = CharTokenizer()
    task = _task(tmp_path, [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}], labels={"a": "A", "b": "BB"})
    scorer = FixedScorer({tuple(tok.encode("A")): [-1.0], tuple(tok.encode("BB")): [-0.6, -0.6]})
    r = classify(task, scorer, tok, shots=0)
    assert r["accuracy"] == 0.5 and r["confusion"] == {"a": {"a": 0, "b": 1}, "b": {"a": 0, "b": 1}}
    assert scorer.seen[0][0] == tok.encode("x=>")  # context: the template up to {label}


def test_few_shot_prompt_and_balanced_demos():
    task = TaskConfig(template="{text}:{label}", labels={"1": "P", "0": "N"}, demo_separator="|")
    pool = [Example(f"p{i}", "1") for i in range(5)] + [Example(f"n{i}", "0") for i in range(5)]
    demos = DemoSampler(pool, ["1", "0"], seed=0)(4, exclude="p0")
    assert sorted(d.label for d in demos) == ["0", "0", "1", "1"]
    assert len(set(demos)) == 4 and Example("p0", "1") not in demos
    prompt = build_prompt(task, "query", demos)
    parts = prompt.split("|")
    assert len(parts) == 5 and parts[-1] == "query:"
    assert all(p.endswith(":P") if p.startswith("p") else p.endswith(":N") for p in parts[:-1])
    assert build_prompt(task, "q", []) == "q:"


def test_generation_task_runs_and_scores(tmp_path, lm):
    tok = CharTokenizer()
    rows = [{"text": "甲乙", "label": "丙"}, {"text": "丁", "label": "戊己"}]
    task = _task(tmp_path, rows, labels={}, type="generation", max_new_tokens=3, max_text_chars=10)
    task.labels = None
    r = generate_task(task, lm, tok, shots=1, batch_size=2)
    assert r["n"] == 2 and 0.0 <= r["char_f1"] <= 1.0 and len(r["examples"]) == 2


def test_metrics_by_hand():
    assert metrics.exact_match("北京。", " 北京") == 1.0
    assert metrics.exact_match("北京市", "北京") == 0.0
    # prediction 北京市 vs reference 北京: precision 2/3, recall 1 -> F1 0.8
    assert metrics.char_f1("北京市", "北京") == pytest.approx(0.8)
    assert metrics.rouge1("今天天气好", "天气很好") == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert metrics.char_f1("", "") == 1.0 and metrics.char_f1("a", "") == 0.0
    assert metrics.perplexity(2.0 * 10, 10) == pytest.approx(np.exp(2.0))


def test_sentiment_split_fixed_balanced_disjoint():
    splits = sentiment_splits()
    test, train = splits["test"], splits["train"]
    assert len(test) == 1000 and sum(e.label == "1" for e in test) == 500
    assert not {e.text for e in test} & {e.text for e in train}
    assert len(train) > 10000
    assert sentiment_splits()["test"] == test  # deterministic


def test_task_yaml_and_errors(tmp_path):
    task = load_task("sentiment")
    assert task.type == "classification" and set(task.labels) == {"0", "1"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: classification\ntemplate: '{text}{label}'\nlabels: {a: A}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least two"):
        load_task(str(bad))
    with pytest.raises(ConfigError, match="no such YAML"):
        load_task("no_such_task")
    with pytest.raises(ConfigError, match="must end with"):
        TaskConfig(template="{label} {text}")
    with pytest.raises(DataError, match="no label words"):
        tok = CharTokenizer()
        t = _task(tmp_path, [{"text": "x", "label": "c"}], labels={"a": "A", "b": "B"})
        classify(t, FixedScorer({}), tok, shots=0)
