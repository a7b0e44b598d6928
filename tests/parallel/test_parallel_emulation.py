"""Strategy arithmetic: for every sharded matmul of a tiny model, split NumPy inputs the way
the read-back strategy says, multiply the shards device by device and combine them with the
implied collective (sum over a split reduction dim = all-reduce, concatenation otherwise).
The result must equal the unsplit product, and the collective must be the one the paper's
layout implies (none for column-parallel, an all-reduce over mp for row-parallel)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from pangu_testing import tiny_model_config

from pangu_ms.config import ParallelConfig
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
from pangu_ms.parallel import parallelize, plan_for
from pangu_ms.parallel.apply import named_primitives

DP, MP = 2, 4


def _canon(x: np.ndarray, split: tuple[int, ...], transpose: bool):
    """Stored operand + its strategy -> the operand as [..., rows, cols] and the matching split."""
    if not transpose:
        return x, tuple(split)
    return np.swapaxes(x, -1, -2), tuple(split[:-2]) + (split[-1], split[-2])


def _chunk(x: np.ndarray, split: tuple[int, ...], index: tuple[int, ...]) -> np.ndarray:
    for axis, (n, i) in enumerate(zip(split, index)):
        x = np.split(x, n, axis=axis)[i]
    return x


def emulate(a, b, sa, sb, transpose_a=False, transpose_b=False):
    """Per-device products combined by concat / sum; returns (result, reduction split)."""
    a, sa = _canon(a, sa, transpose_a)
    b, sb = _canon(b, sb, transpose_b)
    assert sa[:-2] == sb[:-2], f"batch dims split differently: {sa} vs {sb}"
    assert sa[-1] == sb[-2], f"reduction dim split {sa[-1]} in a but {sb[-2]} in b"
    batch, (m, k), n = sa[:-2], sa[-2:], sb[-1]
    out = np.zeros(a.shape[:-1] + b.shape[-1:], a.dtype)
    out_split = batch + (m, n)
    for bi in itertools.product(*(range(x) for x in batch)):
        for i, j in itertools.product(range(m), range(n)):
            # the all-reduce over the split reduction dim: sum of the k partial products
            part = sum(_chunk(a, sa, bi + (i, kk)) @ _chunk(b, sb, bi + (kk, j)) for kk in range(k))
            slices = []
            for axis, (parts, idx) in enumerate(zip(out_split, bi + (i, j))):
                size = out.shape[axis] // parts
                slices.append(slice(idx * size, (idx + 1) * size))
            out[tuple(slices)] = part  # concatenation over every other split dim
    return out, k


@pytest.fixture(scope="module")
def model():
    cfg = tiny_model_config(num_heads=4, vocab_size=96, kernels="reference")
    par = ParallelConfig(dp=DP, mp=MP, vocab_emb_dp=False)
    return parallelize(PanguAlphaWithLoss(cfg), plan_for(cfg, par), par), cfg


def _operands(path: str, cfg, rng):
    b, s, h, f, v, n = 4, cfg.seq_length, cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_heads
    t, d = b * s, h // n
    shapes = {"linear_q": ((t, h), (h, h)), "linear_k": ((t, h), (h, h)), "linear_v": ((t, h), (h, h)),
              "linear_out": ((t, h), (h, h)), "linear_fc1": ((t, h), (h, f)), "linear_fc2": ((t, f), (f, h)),
              "qk_matmul": ((b, n, s, d), (b, n, s, d)), "pv_matmul": ((b, n, s, s), (b, n, s, d)),
              "vocab_proj": ((t, h), (v, h))}
    key = path.split(".")[-2] if path.endswith(".matmul") else path.split(".")[-1]
    sa, sb = shapes[key]
    return key, rng.standard_normal(sa).astype(np.float64), rng.standard_normal(sb).astype(np.float64)


EXPECTED_REDUCTION = {"linear_q": 1, "linear_k": 1, "linear_v": 1, "linear_fc1": 1,  # column-parallel
                      "linear_out": MP, "linear_fc2": MP,  # row-parallel: all-reduce over mp
                      "qk_matmul": 1, "pv_matmul": 1, "vocab_proj": 1}


def test_every_sharded_forward_matmul_reconstructs_the_full_product(model):
    net, cfg = model
    rng = np.random.default_rng(0)
    checked = set()
    for path, prim in named_primitives(net).items():
        if type(prim).__name__ not in ("MatMul", "BatchMatMul"):
            continue
        sa, sb = prim.attrs["in_strategy"]
        key, a, b = _operands(path, cfg, rng)
        ta, tb = bool(prim.attrs.get("transpose_a", False)), bool(prim.attrs.get("transpose_b", False))
        full = (np.swapaxes(a, -1, -2) if ta else a) @ (np.swapaxes(b, -1, -2) if tb else b)
        got, reduction = emulate(a, b, sa, sb, ta, tb)
        np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12, err_msg=path)
        assert reduction == EXPECTED_REDUCTION[key], f"{path}: reduction split {reduction}"
        assert max(max(x) for x in (sa, sb)) > 1, f"{path} is not sharded"
        checked.add(key)
    assert checked == set(EXPECTED_REDUCTION)


def test_emulation_catches_a_wrong_strategy():
    a, b = np.ones((8, 4)), np.ones((4, 6))
    with pytest.raises(AssertionError, match="reduction dim split 2 in a but 1 in b"):
        emulate(a, b, (1, 2), (1, 2))
