"""PanGu-Sigma's model: the RRE layer against a NumPy reference written from the paper's rule,
the routing tables, and the reductions to PanGu-alpha (no sparse layer; one expert)."""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_model_config
from pangu_ms.checkpoint.sigma import dense_to_sparse
from pangu_ms.config import DomainConfig, ExpertsConfig
from pangu_ms.data.dataset import eod_reset
from pangu_ms.kernels.switch import KernelSpec, kernel_spec
from pangu_ms.models.pangu_alpha import PanguAlphaLM
from pangu_ms.models.pangu_sigma import PanguSigmaLM, RandomRoutedExperts, count_parameters, is_expert_parameter, \
    routing_table


def np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_rre(x, tokens, domains, table, w1, b1, w2, b2, capacity):
    """The RRE rule token by token: expert = table[domain, token]; the first `capacity` tokens
    (in order) an expert receives go through its FFN, later ones get 0."""
    out = np.zeros_like(x, dtype=np.float64)
    seen = {}
    for t in range(x.shape[0]):
        e = int(table[domains[t], tokens[t]])
        seen[e] = seen.get(e, 0) + 1
        if seen[e] > capacity:
            continue
        hidden = np_gelu(x[t].astype(np.float64) @ w1[e] + b1[e])
        out[t] = hidden @ w2[e] + b2[e]
    return out


def _experts(**kw):
    fields = dict(domains=[DomainConfig("a", 2), DomainConfig("b", 3)], num_sparse_layers=2)
    fields.update(kw)
    return ExpertsConfig(**fields)


def _layer_case(capacity_factor):
    cfg = tiny_model_config()
    ex = _experts(capacity_factor=capacity_factor)
    table = routing_table(ex, cfg.vocab_size, 1)
    ms.set_seed(3)
    layer = RandomRoutedExperts(cfg, ex, table, KernelSpec())  # the reference ops
    rng = np.random.default_rng(0)
    for p in (layer.expert_b1, layer.expert_b2):  # non-zero biases [E, 1, n] so they are checked too
        p.set_data(Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
    b, s = 3, 16
    tokens = rng.integers(0, cfg.vocab_size, (b, s)).astype(np.int32)
    domains = np.array([0, 1, 1], np.int32)
    x = rng.normal(0, 1, (b * s, cfg.hidden_size)).astype(np.float32)
    key = (domains[:, None] * cfg.vocab_size + tokens).reshape(-1).astype(np.int32)
    got = layer(Tensor(x), Tensor(key)).asnumpy()
    w = {n: getattr(layer, n).asnumpy().squeeze() if "_b" in n else getattr(layer, n).asnumpy()
         for n in ("expert_w1", "expert_b1", "expert_w2", "expert_b2")}
    want = np_rre(x, tokens.reshape(-1), np.repeat(domains, s), table, w["expert_w1"], w["expert_b1"],
                  w["expert_w2"], w["expert_b2"], ex.capacity(b * s))
    return got, want, ex, b * s


@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_rre_layer_matches_numpy(capacity_factor):
    got, want, ex, t = _layer_case(capacity_factor)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    dropped = int((np.abs(want).sum(-1) == 0).sum())
    if capacity_factor is None:
        assert ex.capacity(t) == t and dropped == 0
    else:
        assert ex.capacity(t) == math.ceil(t / 5) and dropped > 0  # the case really drops tokens


def test_routing_tables_two_levels_balanced_and_per_layer():
    ex = _experts()
    v = 96
    t3, t4 = routing_table(ex, v, 3), routing_table(ex, v, 4)
    assert t3.shape == (2, v) and t3.dtype == np.int32
    assert set(np.unique(t3[0])) == {0, 1} and set(np.unique(t3[1])) == {2, 3, 4}  # each domain its group
    assert np.bincount(t3[1])[2:].tolist() == [32, 32, 32]  # equal token ids per expert
    assert not np.array_equal(t3, t4)  # independent per layer
    np.testing.assert_array_equal(t3, routing_table(ex, v, 3))  # drawn from the seed, reproducible
    assert not np.array_equal(t3, routing_table(_experts(routing_seed=7), v, 3))


def test_routing_table_is_a_saved_untrained_parameter(tmp_path):
    cfg = tiny_model_config()
    lm = PanguSigmaLM(cfg, _experts())
    routes = [(n, p) for n, p in lm.parameters_and_names() if n.endswith(".route")]
    assert [n for n, _ in routes] == ["backbone.blocks.1.ffn.route", "backbone.query_layer.ffn.route"]
    assert all(not p.requires_grad and p.name == n for n, p in routes)
    trainable = {p.name for p in lm.trainable_params()}
    assert not any(n.endswith(".route") for n in trainable)
    ms.save_checkpoint(lm, str(tmp_path / "m.ckpt"))
    saved = ms.load_checkpoint(str(tmp_path / "m.ckpt"))
    for n, p in routes:
        np.testing.assert_array_equal(saved[n].asnumpy(), p.asnumpy())
    np.testing.assert_array_equal(routes[0][1].asnumpy(), routing_table(_experts(), cfg.vocab_size, 1))


def _batch(cfg, b=2, seed=0):
    rows = np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, cfg.seq_length + 1)).astype(np.int32)
    rows[0, 5] = cfg.eod_id  # a document boundary inside a row
    pos, doc = eod_reset(rows, cfg.eod_id)
    return Tensor(rows[:, :-1]), Tensor(pos), Tensor(doc)


def _dense_weights(lm):
    return {n: p.asnumpy() for n, p in lm.parameters_and_names()}


def _load(lm, weights):
    ms.load_param_into_net(lm, {k: ms.Parameter(Tensor(v), name=k) for k, v in weights.items()}, strict_load=True)


@pytest.mark.parametrize("experts", [
    ExpertsConfig(domains=[DomainConfig("all", 1)], num_sparse_layers=0),
    ExpertsConfig(domains=[DomainConfig("all", 1)], num_sparse_layers=3),
], ids=["no_sparse_layer", "one_expert_everywhere"])
@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_no_sparse_layer_or_one_expert_is_pangu_alpha(tiny_lm, experts, kernels):
    cfg = tiny_lm.config
    spec = kernel_spec(kernels, device="CPU")
    if kernels == "fused":  # fails, never skips, when the C++ kernels are missing
        assert spec.name != "reference", "model.kernels=fused fell back to the reference ops here"
    dense = PanguAlphaLM(cfg, spec)
    dense.set_train(False)
    _load(dense, _dense_weights(tiny_lm))
    sigma = PanguSigmaLM(cfg, experts, spec)
    sigma.set_train(False)
    _load(sigma, dense_to_sparse(_dense_weights(tiny_lm), cfg, experts))
    ids, pos, doc = _batch(cfg)
    want = dense(ids, pos, doc).asnumpy()
    got = sigma(ids, pos, doc, Tensor(np.zeros(2, np.int32))).asnumpy()
    # bitwise: the one expert's batched matmul sums like the dense matmul (MindSpore 2.10 CPU)
    np.testing.assert_array_equal(got, want)


def test_parameter_count_formula_matches_instantiation():
    cfg = tiny_model_config()
    for ex in (_experts(), _experts(num_sparse_layers=0), _experts(sparse_layers=[0, 2])):
        lm = PanguSigmaLM(cfg, ex)
        n = sum(int(np.prod(p.shape)) for p in lm.trainable_params())
        assert n == count_parameters(cfg, ex)
        experts_n = sum(int(np.prod(p.shape)) for p in lm.trainable_params() if is_expert_parameter(p.name))
        h, f = cfg.hidden_size, cfg.ffn_hidden_size
        assert experts_n == len(ex.layer_indices(cfg.num_layers)) * ex.num_experts * (2 * h * f + f + h)
