"""Numerics of the PanGu-alpha model (reference kernels) against an independent NumPy
implementation, and the reference loss forms against NumPy and each other."""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from pangu_testing import tiny_model_config
from pangu_ms.kernels.reference import TiedHeadCrossEntropy, VocabParallelCrossEntropy
from pangu_ms.models.pangu_alpha import PanguAlphaLM

EOD = 8


# ----------------------------------------------------------------------------- NumPy model


def np_layernorm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_fast_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


ACT = {"gelu": np_gelu, "fast_gelu": np_fast_gelu}


def np_attention(w, p, query_in, kv_in, allowed, n_heads):
    """query_in, kv_in [B, S, H]; allowed [B, S, S] bool -> [B, S, H]."""
    b, s, h = kv_in.shape
    d = h // n_heads

    def proj(x, name):
        return x @ w[f"{p}.{name}.weight"] + w[f"{p}.{name}.bias"]

    def heads(x):
        return x.reshape(b, s, n_heads, d).transpose(0, 2, 1, 3)  # [B, N, S, D]

    q, k, v = heads(proj(query_in, "linear_q")), heads(proj(kv_in, "linear_k")), heads(proj(kv_in, "linear_v"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # [B, N, S, S]
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
    return proj(ctx, "linear_out")


def np_block(w, p, h, allowed, n_heads, query=None, act=np_gelu):
    x = np_layernorm(h, w[f"{p}.ln1.gamma"], w[f"{p}.ln1.beta"])
    h = h + np_attention(w, f"{p}.attention", x if query is None else query, x, allowed, n_heads)
    y = np_layernorm(h, w[f"{p}.ln2.gamma"], w[f"{p}.ln2.beta"])
    y = act(y @ w[f"{p}.ffn.linear_fc1.weight"] + w[f"{p}.ffn.linear_fc1.bias"])
    return h + y @ w[f"{p}.ffn.linear_fc2.weight"] + w[f"{p}.ffn.linear_fc2.bias"]


def np_pangu_logits(w, cfg, ids, pos, allowed):
    """ids, pos [B, S]; allowed [B, S, S] -> logits [B*S, V] in float64."""
    emb = w["backbone.word_embedding.embedding_table"]
    act = ACT[cfg.activation]
    h = emb[ids] + w["backbone.position_embedding.embedding_table"][pos]
    for i in range(cfg.num_layers - 1):
        h = np_block(w, f"backbone.blocks.{i}", h, allowed, cfg.num_heads, act=act)
    h = np_layernorm(h, w["backbone.final_ln.gamma"], w["backbone.final_ln.beta"])
    query = w["backbone.top_query_embedding.embedding_table"][pos]
    h = np_block(w, "backbone.query_layer", h, allowed, cfg.num_heads, query=query, act=act)
    return (h @ emb.T).reshape(-1, emb.shape[0])


def eod_positions_and_mask(ids):
    """Independent loop version of the end-of-document reset: positions, document ids and
    allowed [B,S,S]."""
    b, s = ids.shape
    pos = np.zeros((b, s), np.int32)
    doc = np.zeros((b, s), np.int32)
    allowed = np.zeros((b, s, s), bool)
    for r in range(b):
        doc_start, n = 0, 0
        for i in range(s):
            pos[r, i] = i - doc_start
            doc[r, i] = n
            allowed[r, i, doc_start:i + 1] = True
            if ids[r, i] == EOD:
                doc_start, n = i + 1, n + 1
    return pos, doc, allowed


@pytest.mark.parametrize("activation", ["gelu", "fast_gelu"])
def test_logits_match_numpy_with_query_layer_and_eod_masks(activation):
    cfg = tiny_model_config(init_std=0.2, kernels="reference", activation=activation)
    ms.set_seed(3)
    model = PanguAlphaLM(cfg)
    rng = np.random.default_rng(0)
    for p in model.trainable_params():  # random LayerNorm gains/shifts and biases too
        base = 1.0 if p.name.endswith("gamma") else 0.0
        p.set_data(Tensor((base + 0.2 * rng.standard_normal(p.shape)).astype(np.float32)))
    ids = rng.integers(10, cfg.vocab_size, (2, cfg.seq_length)).astype(np.int32)
    ids[0, [3, 9]] = EOD
    ids[1, [0, 14]] = EOD
    pos, doc, allowed = eod_positions_and_mask(ids)
    assert pos[0, 4] == 0 and pos[0, 10] == 0 and not allowed[0, 5, 2]
    got = model(Tensor(ids), Tensor(pos), Tensor(doc)).asnumpy()
    w = {p.name: p.asnumpy().astype(np.float64) for p in model.trainable_params()}
    ref = np_pangu_logits(w, cfg, ids, pos, allowed)
    assert got.shape == (2 * cfg.seq_length, cfg.vocab_size)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel
    # the masks matter: a plain causal mask gives different logits in the reset documents
    causal = np.broadcast_to(np.tril(np.ones((cfg.seq_length,) * 2, bool)), allowed.shape)
    plain = np_pangu_logits(w, cfg, ids, pos, causal)
    assert np.abs(plain - ref).max() / np.abs(ref).max() > 1e-2


# ----------------------------------------------------------------------------- the loss


class _ScaledLoss(nn.Cell):
    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def construct(self, h, table, labels):
        return self.loss(h, table, labels) * 3.0  # dout != 1 checks the backward's scaling


@pytest.fixture(scope="module")
def ce_case():
    cfg = tiny_model_config()
    rng = np.random.default_rng(2)
    h = rng.standard_normal((24, cfg.hidden_size)).astype(np.float32)
    table = (0.3 * rng.standard_normal((cfg.vocab_size, cfg.hidden_size))).astype(np.float32)
    labels = rng.integers(0, cfg.vocab_size, 24).astype(np.int32)
    labels[[1, 5, 6]] = cfg.pad_id  # padding is not scored
    return cfg, h, table, labels


def np_loss_and_grads(h, table, labels, pad_id):
    """Mean NLL over non-pad labels of h table^T, and its gradients for h and table (float64)."""
    h, table = h.astype(np.float64), table.astype(np.float64)
    x = h @ table.T
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    keep = labels != pad_id
    rows = np.arange(len(labels))
    loss = -np.log(p[rows, labels])[keep].mean()
    d = p.copy()
    d[rows, labels] -= 1.0
    d *= (keep / keep.sum())[:, None]
    return loss, d @ table, d.T @ h


def test_loss_value_and_gradients_match_numpy(ce_case):
    cfg, h, table, labels = ce_case
    ref, dh, dtable = np_loss_and_grads(h, table, labels, cfg.pad_id)
    for loss in (TiedHeadCrossEntropy(cfg.pad_id), VocabParallelCrossEntropy(cfg.pad_id, cfg.vocab_size)):
        got = float(loss(Tensor(h), Tensor(table), Tensor(labels)).asnumpy())
        assert abs(got - ref) < 1e-5 * abs(ref), type(loss).__name__
        gh, gt = ms.grad(_ScaledLoss(loss), grad_position=(0, 1))(Tensor(h), Tensor(table), Tensor(labels))
        np.testing.assert_allclose(gh.asnumpy(), 3.0 * dh, rtol=1e-4, atol=1e-6, err_msg=type(loss).__name__)
        np.testing.assert_allclose(gt.asnumpy(), 3.0 * dtable, rtol=1e-4, atol=1e-6, err_msg=type(loss).__name__)
        assert np.abs(gh.asnumpy()[[1, 5, 6]]).max() == 0.0  # no gradient through padded labels
