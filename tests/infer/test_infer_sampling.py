"""Sampling on crafted distributions (pure NumPy; no graphs)."""
from __future__ import annotations

import numpy as np
import pytest

from pangu_ms.infer.sampling import (Sampler, SamplingParams, apply_penalties, next_token_probs, softmax,
                                     top_k_filter, top_p_filter)

PROBS = np.array([[0.5, 0.25, 0.15, 0.1]])
LOGITS = np.log(PROBS)


def _draw(params: SamplingParams, logits: np.ndarray, n: int) -> np.ndarray:
    sampler = Sampler(params, [[0]] * logits.shape[0], logits.shape[1])
    return np.stack([sampler(logits) for _ in range(n)])  # [n, rows]


def test_greedy_picks_argmax():
    logits = np.array([[0.1, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 0.0]])
    tokens = Sampler(SamplingParams(temperature=0.0), [[], []], 4)(logits)
    np.testing.assert_array_equal(tokens, [1, 0])


def test_temperature_one_matches_distribution():
    draws = _draw(SamplingParams(temperature=1.0, seed=0), LOGITS, 20000)[:, 0]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, PROBS[0], atol=0.015)


def test_temperature_sharpens_and_flattens():
    cold = next_token_probs(LOGITS, SamplingParams(temperature=0.5))[0]
    hot = next_token_probs(LOGITS, SamplingParams(temperature=2.0))[0]
    ref_cold = PROBS[0] ** 2 / (PROBS[0] ** 2).sum()
    ref_hot = np.sqrt(PROBS[0]) / np.sqrt(PROBS[0]).sum()
    np.testing.assert_allclose(cold, ref_cold, rtol=1e-9)
    np.testing.assert_allclose(hot, ref_hot, rtol=1e-9)


def test_top_k_keeps_k_best_and_renormalises():
    probs = next_token_probs(LOGITS, SamplingParams(top_k=2))[0]
    np.testing.assert_allclose(probs, [0.5 / 0.75, 0.25 / 0.75, 0, 0], rtol=1e-9)
    draws = _draw(SamplingParams(top_k=2, seed=1), LOGITS, 2000)
    assert set(np.unique(draws)) == {0, 1}
    assert np.isinf(top_k_filter(LOGITS, 1)[0, 1:]).all()


@pytest.mark.parametrize("p, kept", [(0.5, [0]), (0.55, [0, 1]), (0.75, [0, 1]), (0.76, [0, 1, 2]),
                                     (0.9, [0, 1, 2]), (0.95, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])])
def test_top_p_smallest_set_reaching_p(p, kept):
    filtered = top_p_filter(LOGITS, p)[0]
    assert list(np.flatnonzero(np.isfinite(filtered))) == kept


def test_top_p_order_independent_and_renormalised():
    perm = [2, 0, 3, 1]  # the same distribution with shuffled token ids
    probs = next_token_probs(LOGITS[:, perm], SamplingParams(top_p=0.7))[0]
    expected = np.array([0, 0.5, 0, 0.25]) / 0.75
    np.testing.assert_allclose(probs, expected, rtol=1e-9)


def test_top_k_then_top_p_combined():
    probs = next_token_probs(LOGITS, SamplingParams(top_k=3, top_p=0.6))[0]
    # top-3 renormalised: .5/.9, .25/.9, .15/.9 -> top-p 0.6 keeps the first two
    np.testing.assert_allclose(probs, [2 / 3, 1 / 3, 0, 0], rtol=1e-9)


def test_repetition_penalty_ctrl_rule():
    logits = np.array([[2.0, -2.0, 2.0, -2.0]])
    seen = np.array([[True, True, False, False]])
    out = apply_penalties(logits, seen, np.zeros((1, 4)), SamplingParams(repetition_penalty=2.0))
    np.testing.assert_allclose(out, [[1.0, -4.0, 2.0, -2.0]])


def test_frequency_and_presence_penalties():
    logits = np.zeros((1, 4))
    counts = np.array([[0, 1, 3, 0]])
    out = apply_penalties(logits, counts > 0, counts,
                          SamplingParams(frequency_penalty=0.5, presence_penalty=1.0))
    np.testing.assert_allclose(out, [[0.0, -1.5, -2.5, 0.0]])


def test_sampler_penalises_its_own_output():
    """Greedy with a presence penalty walks down the ranking instead of repeating."""
    logits = np.array([[3.0, 2.0, 1.0, 0.0]])
    sampler = Sampler(SamplingParams(temperature=0.0, presence_penalty=10.0), [[]], 4)
    assert [int(sampler(logits)[0]) for _ in range(4)] == [0, 1, 2, 3]
    rep = Sampler(SamplingParams(temperature=0.0, repetition_penalty=4.0), [[0]], 4)
    assert int(rep(logits)[0]) == 1  # 3/4 < 2: the prompt's token 0 is penalised


def test_seed_reproducible_and_varies():
    a = _draw(SamplingParams(seed=42), np.zeros((2, 50)), 30)
    b = _draw(SamplingParams(seed=42), np.zeros((2, 50)), 30)
    c = _draw(SamplingParams(seed=43), np.zeros((2, 50)), 30)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_never_draws_zero_probability_tokens():
    logits = np.array([[-np.inf, 0.0, -np.inf, 0.0]])
    draws = _draw(SamplingParams(seed=3), logits, 500)
    assert set(np.unique(draws)) <= {1, 3}
    np.testing.assert_allclose(softmax(logits)[0], [0, 0.5, 0, 0.5])


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(repetition_penalty=0.0)])
def test_invalid_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
