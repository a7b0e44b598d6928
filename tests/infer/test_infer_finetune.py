"""The fine-tuning loss is the label tokens' NLL, the quantity the classifier compares."""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor

from pangu_testing import tiny_model_config
from infer_fixtures import no_compile_cache  # noqa: F401 (fixture)
from pangu_ms.data.dataset import eod_reset
from pangu_ms.eval.datasets import Example
from pangu_ms.eval.scoring import Scorer
from pangu_ms.eval.tasks import TaskConfig
from pangu_ms.infer.finetune import FinetuneLoss, build_rows
from pangu_ms.models.pangu_alpha import PanguAlphaLM


class CharTok:
    eod_id = 8

    def encode(self, text: str) -> list[int]:
        return [10 + ord(c) % 86 for c in text]


def test_finetune_loss_equals_scored_label_nll():
    ms.set_seed(2)
    lm = PanguAlphaLM(tiny_model_config(seq_length=24))
    lm.set_train(False)
    tok = CharTok()
    task = TaskConfig(template="{text}>{label}", labels={"1": "YES", "0": "N"})
    examples = [Example("abcdef", "1"), Example("xy", "0"), Example("q" * 40, "1"), Example("mnop", "0")]
    ids, where, labels = build_rows(examples, task, tok, max_tokens=24, pad_id=6)
    assert where.shape == labels.shape == (4, 3) and (labels[1, 1:] == 6).all()
    rows = (where + 24 * np.arange(4)[:, None]).reshape(-1).astype(np.int32)
    pos, mask = eod_reset(np.zeros((4, 25), np.int32), 0, reset_at_eod=False)
    loss = FinetuneLoss(lm)(Tensor(ids), Tensor(pos), Tensor(mask), Tensor(rows), Tensor(labels.reshape(-1)))
    items = [(tok.encode(task.render(e.text)[0]), tok.encode(task.labels[e.label])) for e in examples]
    lps = Scorer(lm, batch_size=4, length_bucket=8).continuation_logprobs(items)
    expected = -np.concatenate(lps).mean()  # mean over all label tokens (3 + 1 + 3 + 1)
    np.testing.assert_allclose(float(loss.asnumpy()), expected, rtol=1e-5)
