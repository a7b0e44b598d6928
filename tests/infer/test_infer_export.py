"""MindIR export of the prompt and step graphs reloads with GraphCell and gives the same logits."""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from pangu_ms.infer.decoder import IncrementalDecoder, left_pad
from pangu_ms.infer.export import export_mindir


def test_mindir_roundtrip_same_logits(tiny_lm, tmp_path):
    prompts = [[11, 12, 13, 14, 15], [20, 21]]
    prompt_file, step_file = export_mindir(tiny_lm, tmp_path, batch_size=2, prompt_length=8, max_length=16)
    prompt_graph = nn.GraphCell(ms.load(str(prompt_file)))
    step_graph = nn.GraphCell(ms.load(str(step_file)))

    dec = IncrementalDecoder(tiny_lm, batch_size=2, max_length=16, prompt_bucket=8)
    expected = [dec.start(prompts)]
    ids, pos, pad = left_pad(prompts, 8, pad_id=6)
    logits, k, v = prompt_graph(Tensor(ids), Tensor(pos), Tensor(pad))
    got = [logits.asnumpy()]
    for slot in range(8, 12):
        tok = expected[-1].argmax(-1).astype(np.int32)
        expected.append(dec.step(tok))
        step_pos = (slot - pad).reshape(-1, 1).astype(np.int32)
        logits, k, v = step_graph(Tensor(tok.reshape(-1, 1)), Tensor(step_pos), Tensor(slot, ms.int32),
                                  Tensor(pad), k, v)
        got.append(logits.asnumpy())
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5)
