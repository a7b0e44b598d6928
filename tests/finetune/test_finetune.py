"""The fine-tuning loss is the label tokens' NLL (the quantity the classifier compares) plus
the weighted auxiliary next-token NLL of sampled prompt positions; batches group rows by length."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_model_config
from pangu_ms.data.dataset import eod_reset
from pangu_ms.data.labelled import Example
from pangu_ms.eval.scoring import Scorer
from pangu_ms.eval.tasks import TaskConfig
from pangu_ms.finetune.loss import FinetuneLoss
from pangu_ms.finetune.rows import bucket_widths, build_rows, length_batches, lm_targets
from pangu_ms.models.pangu_alpha import PanguAlphaLM


class CharTok:
    eod_id = 8

    def encode(self, text: str) -> list[int]:
        return [10 + ord(c) % 86 for c in text]


def test_finetune_loss_equals_scored_label_nll_plus_weighted_lm_nll():
    ms.set_seed(2)
    lm = PanguAlphaLM(tiny_model_config(seq_length=24))
    lm.set_train(False)
    tok = CharTok()
    task = TaskConfig(template="{text}>{label}", labels={"1": "YES", "0": "N"})
    examples = [Example("abcdef", "1"), Example("xy", "0"), Example("q" * 40, "1"), Example("mnop", "0")]
    ids, where, labels = build_rows(examples, task, tok, max_tokens=24, pad_id=6)
    assert where.shape == labels.shape == (4, 3) and (labels[1, 1:] == 6).all()
    offset = 24 * np.arange(4)[:, None]
    rows = (where + offset).reshape(-1).astype(np.int32)
    lm_pos, lm_tgt = lm_targets(ids, where[:, 0], 5, 6, np.random.default_rng(0))
    pos, doc = eod_reset(np.zeros((4, 25), np.int32), 0, reset_at_eod=False)
    inputs = (Tensor(ids), Tensor(pos), Tensor(doc), Tensor(rows), Tensor(labels.reshape(-1)),
              Tensor((lm_pos + offset).reshape(-1).astype(np.int32)), Tensor(lm_tgt.reshape(-1)))
    scorer = Scorer(lm, batch_size=4, length_bucket=8)
    items = [(tok.encode(task.render(e.text)[0]), tok.encode(task.labels[e.label])) for e in examples]
    label_nll = -np.concatenate(scorer.continuation_logprobs(items)).mean()  # over 3 + 1 + 3 + 1 tokens
    # independent path: every next-token log-prob of each row's prompt, picked at the sampled positions
    prompts = [list(ids[r, :where[r, 0] + 1]) for r in range(4)]
    lps = scorer.logprobs(prompts)
    lm_nll = -np.mean([lps[r][p] for r in range(4) for p in lm_pos[r]])
    for w in (0.0, 0.5):
        loss = float(FinetuneLoss(lm, lm_weight=w)(*inputs).asnumpy())
        np.testing.assert_allclose(loss, label_nll + w * lm_nll, rtol=1e-5)


def test_lm_targets_stay_inside_each_prompt():
    ids = np.arange(40, dtype=np.int32).reshape(4, 10) + 100
    first = np.array([5, 0, 9, 1])  # row 1: a one-token prompt has no next-token pair
    pos, tgt = lm_targets(ids, first, 50, 6, np.random.default_rng(3))
    for r in (0, 2, 3):
        assert pos[r].min() >= 0 and pos[r].max() < first[r]
        np.testing.assert_array_equal(tgt[r], ids[r, pos[r] + 1])
    assert set(pos[0]) == set(range(5))  # every position can be drawn
    assert (tgt[1] == 6).all()


def test_length_batches_group_rows_by_width_and_cover_every_row_each_epoch():
    lengths = np.array([3, 5, 17, 31, 33, 64, 70, 100, 128, 2, 40, 129, 190])
    widths = bucket_widths([32, 64, 96, 128, 256], 192)
    np.testing.assert_array_equal(widths, [32, 64, 96, 128, 192])  # 256 > max_tokens is dropped
    gen = length_batches(lengths, 2, widths, np.random.default_rng(0))
    # buckets: 32 -> 5 rows (3 batches), 64 -> 3 (2), 96 -> 1 (1), 128 -> 2 (1), 192 -> 2 (1): 8 an epoch
    expect = {3: 32, 5: 32, 17: 32, 31: 32, 2: 32, 33: 64, 64: 64, 40: 64, 70: 96, 100: 128, 128: 128,
              129: 192, 190: 192}
    epoch = [next(gen) for _ in range(8)]
    seen = set()
    for batch, width in epoch:
        assert len(batch) == 2 and all(expect[n] == width for n in lengths[batch])
        seen |= set(batch.tolist())
    assert seen == set(range(len(lengths)))
    with pytest.raises(ValueError, match="wider than the widest bucket 192"):
        next(length_batches(np.array([10, 193]), 2, widths, np.random.default_rng(0)))


def test_weight_average_is_the_exponential_moving_average():
    from mindspore import Parameter

    from pangu_ms.finetune.ema import WeightAverage

    w = Parameter(Tensor(np.zeros((3, 2), np.float32)), name="w")
    avg = WeightAverage([w], decay=0.5)
    avg.copy_to_params()  # before any update: the weights stay as they are
    np.testing.assert_array_equal(w.asnumpy(), 0.0)
    values = [np.full((3, 2), v, np.float32) for v in (4.0, 2.0, 8.0)]
    for v in values:
        w.set_data(Tensor(v))
        avg.update()
    expected = 0.5 * (0.5 * 4.0 + 0.5 * 2.0) + 0.5 * 8.0  # starts at the first value
    np.testing.assert_array_equal(w.asnumpy(), 8.0)  # updating never touches the live weights
    avg.copy_to_params()
    np.testing.assert_allclose(w.asnumpy(), expected, rtol=1e-6)
    assert avg.updates == 3


def test_with_dropout_keeps_the_weights_and_only_drops_in_training():
    """The fine-tune flow: the rebuilt model trains with dropout (the loss is random), and its
    evaluation afterwards (a fresh Scorer in eval mode) equals the original model's."""
    from pangu_ms.finetune.loss import with_dropout

    ms.set_seed(3)
    lm = PanguAlphaLM(tiny_model_config(seq_length=16))
    lm.set_train(False)
    noisy = with_dropout(lm, 0.3)
    assert noisy.config.dropout == 0.3 and with_dropout(lm, lm.config.dropout) is lm
    tok, task = CharTok(), TaskConfig(template="{text}>{label}", labels={"1": "YES", "0": "N"})
    ids, where, labels = build_rows([Example("abcdef", "1"), Example("xyz", "0")], task, tok, max_tokens=16, pad_id=6)
    pos, doc = eod_reset(np.zeros((2, 17), np.int32), 0, reset_at_eod=False)
    rows = Tensor((where + 16 * np.arange(2)[:, None]).reshape(-1).astype(np.int32))
    inputs = (Tensor(ids), Tensor(pos), Tensor(doc), rows, Tensor(labels.reshape(-1)), rows, Tensor(labels.reshape(-1)))
    loss = FinetuneLoss(noisy)
    noisy.set_train(True)
    first, second = (float(loss(*inputs).asnumpy()) for _ in range(2))
    assert first != second  # dropout is active while training
    noisy.set_train(False)
    seqs = [list(ids[0, :7]), list(ids[1, :4])]
    for a, b in zip(Scorer(noisy, batch_size=2, length_bucket=8).logprobs(seqs),
                    Scorer(lm, batch_size=2, length_bucket=8).logprobs(seqs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
