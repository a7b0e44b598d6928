"""A whole transformer layer run through its shard plan, device by device, in NumPy.

The tiny model is parallelized for dp=2 x mp=4; the strategies are read back from its
primitives. Each tensor of the layer lives as per-device shards with a layout (which device
axis splits which dimension), and every operator computes on each device from that device's
shards only. Between consecutive operators the layout the producer's strategy gives must be
the layout the consumer's strategy takes: any difference is an unplanned redistribution and
fails the test. The only communication allowed is the one the paper's layout implies, the
all-reduce of a row-parallel matmul's partial sums (attention output and FFN fc2). The
gathered result must equal the MindSpore layer's own forward.

The chain follows the plan's entries for the layout-carrying operators (Q/K/V/out and FFN
matmuls with their bias adds, the head transposes when they carry a strategy, the attention
batch-matmuls, bias add and softmax, the residual adds). LayerNorm and the activation are
applied by rule (row-wise over an unsplit hidden dimension; elementwise), not by the names of
their internal primitives, so replacing those primitives keeps this test meaningful.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from pangu_testing import tiny_model_config

from pangu_ms.config import ParallelConfig
from pangu_ms.models.pangu_alpha import LAYER_WEIGHTS, PanguAlphaWithLoss
from pangu_ms.parallel import parallelize, plan_for

DP, MP = 2, 4  # distinct, so a split degree names its device axis
AXIS = {DP: "dp", MP: "mp"}
DEVICES = list(itertools.product(range(DP), range(MP)))
B = 4  # batch


def layout_of(split: tuple[int, ...], what: str) -> tuple[str | None, ...]:
    """A strategy's split degrees -> the device axis splitting each dimension (None: whole)."""
    out = []
    for n in split:
        if n != 1 and n not in AXIS:
            raise AssertionError(f"{what}: split {n} is neither dp={DP} nor mp={MP}")
        out.append(AXIS.get(n) if n != 1 else None)
    named = [a for a in out if a]
    assert len(named) == len(set(named)), f"{what}: one device axis splits two dimensions {split}"
    return tuple(out)


def _count(axis: str) -> int:
    return DP if axis == "dp" else MP


def _coord(device: tuple[int, int], axis: str) -> int:
    return device[0] if axis == "dp" else device[1]


def _chunk(x: np.ndarray, layout, device) -> np.ndarray:
    for dim, axis in enumerate(layout):
        if axis:
            x = np.split(x, _count(axis), axis=dim)[_coord(device, axis)]
    return x


@dataclasses.dataclass
class Sharded:
    """A tensor as one shard per device, laid out by `layout`."""

    shards: dict
    layout: tuple

    @classmethod
    def scatter(cls, full: np.ndarray, layout) -> "Sharded":
        return cls({dev: _chunk(full, layout, dev) for dev in DEVICES}, tuple(layout))

    def gather(self) -> np.ndarray:
        """The whole tensor; devices that hold the same block (replicas) must agree exactly."""
        local = self.shards[DEVICES[0]].shape
        full = np.full(tuple(n * (_count(a) if a else 1) for n, a in zip(local, self.layout)), np.nan)
        seen = {}
        for dev, x in self.shards.items():
            block = tuple(slice(_coord(dev, a) * n, (_coord(dev, a) + 1) * n) if a else slice(None)
                          for n, a in zip(local, self.layout))
            key = tuple((s.start, s.stop) for s in block)
            if key in seen:
                assert np.array_equal(seen[key], x), f"replicas of block {key} differ"
            seen[key] = x
            full[block] = x
        assert not np.isnan(full).any()
        return full

    def map(self, fn, layout=None) -> "Sharded":
        return Sharded({dev: fn(x) for dev, x in self.shards.items()}, self.layout if layout is None else layout)


class Chain:
    """Runs operators on shards and records what passed between them."""

    def __init__(self, net, prefix: str):
        self.prims = {}
        for name, cell in net.cells_and_names():
            for attr, value in vars(cell).get("_primitives", {}).items():
                if value is not None and value.attrs.get("in_strategy") is not None:
                    self.prims[f"{name}.{attr}"] = value
        self.prefix = prefix
        self.redistributions: list[str] = []
        self.collectives: list[str] = []
        self.checked: list[str] = []

    def strategy(self, path: str, *, required: bool = True):
        prim = self.prims.get(f"{self.prefix}.{path}")
        if prim is None and required:
            raise AssertionError(f"{self.prefix}.{path} has no strategy in the read-back plan")
        return None if prim is None else prim.attrs["in_strategy"]

    def take(self, t: Sharded, want, consumer: str, producer: str) -> Sharded:
        """`t` as `consumer` takes it; a layout change on the way is an unplanned redistribution."""
        self.checked.append(f"{producer} -> {consumer}")
        if t.layout != tuple(want):
            self.redistributions.append(f"{producer} gives {t.layout} but {consumer} takes {tuple(want)}")
            t = Sharded.scatter(t.gather(), want)  # go on with the numerics as the framework would
        return t

    def inputs(self, path: str, *tensors: tuple[Sharded, str]) -> list[Sharded]:
        split = self.strategy(path)
        return [self.take(t, layout_of(s, path), path, producer) for (t, producer), s in zip(tensors, split)]

    def weight(self, path: str, index: int, value: np.ndarray) -> Sharded:
        """A parameter is stored as its consumer's strategy for it says."""
        return Sharded.scatter(value, layout_of(self.strategy(path)[index], path))

    def matmul(self, path: str, a: Sharded, a_from: str, b: Sharded, b_from: str | None = None, *,
               transpose_b: bool = False) -> Sharded:
        """Per-device products; a split reduction dimension leaves partial sums, all-reduced over
        its axis (the collective a row-parallel layout implies). `b` is a weight laid out by the
        strategy (`weight`), or an activation from `b_from` that must arrive in that layout."""
        a = self.inputs(path, (a, a_from))[0]
        if b_from is not None:
            b = self.take(b, layout_of(self.strategy(path)[1], path), path, b_from)
        b_layout = b.layout
        ka = a.layout[-1]
        kb = b_layout[-1] if transpose_b else b_layout[-2]
        assert ka == kb, f"{path}: the reduction dim is split by {ka} in one operand and {kb} in the other"
        assert a.layout[:-2] == b_layout[:-2], f"{path}: batch dims split differently {a.layout} vs {b_layout}"
        cols = b_layout[-2] if transpose_b else b_layout[-1]
        out = {dev: a.shards[dev] @ (np.swapaxes(b.shards[dev], -1, -2) if transpose_b else b.shards[dev])
               for dev in DEVICES}
        if ka is not None:  # all-reduce over the devices that differ only in the reduction axis
            self.collectives.append(f"all-reduce over {ka} in {path}")
            reduced = {}
            for dev in DEVICES:
                peers = [p for p in DEVICES if all(_coord(p, x) == _coord(dev, x) for x in ("dp", "mp") if x != ka)]
                reduced[dev] = sum(out[p] for p in peers)
            out = reduced
        return Sharded(out, a.layout[:-1] + (cols,))

    def add(self, path: str, x: Sharded, x_from: str, y: Sharded, y_from: str) -> Sharded:
        x, y = self.inputs(path, (x, x_from), (y, y_from))
        return Sharded({dev: x.shards[dev] + y.shards[dev] for dev in DEVICES}, x.layout)


def _bias_add_path(cell, linear: str) -> str:
    """The bias add of a Linear: its Add/BiasAdd primitive, whatever its attribute is called."""
    found = [attr for attr, p in vars(cell).get("_primitives", {}).items()
             if p is not None and type(p).__name__ in ("Add", "BiasAdd")]
    assert len(found) == 1, f"{linear}: expected one bias add primitive, found {found}"
    return f"{linear}.{found[0]}"


def _layer_norm(x: Sharded, gamma: np.ndarray, beta: np.ndarray, eps: float, what: str) -> Sharded:
    assert x.layout[-1] is None, f"{what}: LayerNorm over a hidden dim split by {x.layout[-1]}"
    def ln(v):
        d = v - v.mean(-1, keepdims=True)
        return d / np.sqrt((d * d).mean(-1, keepdims=True) + eps) * gamma + beta
    return x.map(ln)


def _gelu(v: np.ndarray) -> np.ndarray:
    return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))


def run_layer(chain: Chain, layer, cfg, h: np.ndarray, bias: np.ndarray, query: np.ndarray | None) -> Sharded:
    """One block (or the query layer, with `query`) through the plan; returns its output."""
    w = {role: getattr_path(layer, path).asnumpy().astype(np.float64) for role, path in LAYER_WEIGHTS.items()}
    n, d = cfg.num_heads, cfg.head_dim
    s = h.shape[0] // B
    residual = chain.strategy("ln2.residual_add")
    h0 = Sharded.scatter(h, layout_of(residual[0], "ln2.residual_add"))  # the residual stream as planned
    x = _layer_norm(h0, w["ln1_gamma"], w["ln1_beta"], cfg.layernorm_eps, "ln1")
    q_in = x if query is None else Sharded.scatter(query, layout_of(residual[0], "query input"))

    def project(name: str, t: Sharded, t_from: str, weight: str, bias_name: str) -> Sharded:
        cell = getattr_path(layer, name)
        y = chain.matmul(f"{name}.matmul", t, t_from, chain.weight(f"{name}.matmul", 1, w[weight]))
        add = _bias_add_path(cell.activation if cell.activation is not None else cell, name)
        if cell.activation is not None:  # bias + activation in one role: its bias add, then the act
            add = f"{name}.activation.{add.rsplit('.', 1)[1]}"
        return chain.add(add, y, f"{name}.matmul", chain.weight(add, 1, w[bias_name]), f"{name}.bias")

    def heads(t: Sharded, t_from: str) -> tuple[Sharded, str]:
        """[T, H] -> [B, N, S, D]: tokens split -> batch split, hidden split -> heads split."""
        bsnd = (t.layout[0], None, t.layout[1], None)
        t = t.map(lambda v: v.reshape(v.shape[0] // s, s, -1, d), bsnd)  # [B, S, N, D]
        split = chain.strategy("attention.to_heads", required=False)
        if split is not None:
            t = chain.take(t, layout_of(split[0], "to_heads"), "attention.to_heads", t_from)
        return t.map(lambda v: v.transpose(0, 2, 1, 3), (t.layout[0], t.layout[2], None, None)), "attention.to_heads"

    q = project("attention.linear_q", q_in, "ln1" if query is None else "query input", "wq", "bq")
    q = q.map(lambda v: v / math.sqrt(d))  # scale_q: elementwise by a scalar
    k = project("attention.linear_k", x, "ln1", "wk", "bk")
    v = project("attention.linear_v", x, "ln1", "wv", "bv")
    (q, qf), (k, kf), (v, vf) = (heads(t, f"attention.linear_{c}") for t, c in ((q, "q"), (k, "k"), (v, "v")))
    scores = chain.matmul("attention.core.qk_matmul", q, qf, k, kf, transpose_b=True)
    masked_by = "attention.core.qk_matmul"
    if chain.strategy("attention.core.add_bias", required=False) is not None:  # the additive mask, if an op
        mask = chain.weight("attention.core.add_bias", 1, bias)
        scores = chain.add("attention.core.add_bias", scores, masked_by, mask, "attention bias")
        masked_by = "attention.core.add_bias"
    else:  # masking inside another op: by rule, the mask split over the batch like the scores
        mask = Sharded.scatter(bias, (scores.layout[0], None, None, None))
        scores = Sharded({dev: scores.shards[dev] + mask.shards[dev] for dev in DEVICES}, scores.layout)
    (scores,) = chain.inputs("attention.core.softmax", (scores, masked_by))
    assert scores.layout[-1] is None, "softmax over a split key dimension"
    probs = scores.map(lambda t: np.exp(t - t.max(-1, keepdims=True)) / np.exp(t - t.max(-1, keepdims=True)).sum(
        -1, keepdims=True))
    ctx = chain.matmul("attention.core.pv_matmul", probs, "attention.core.softmax", v, vf)  # [B, N, S, D]
    ctx = ctx.map(lambda t: t.transpose(0, 2, 1, 3), (ctx.layout[0], None, ctx.layout[1], None))  # [B, S, N, D]
    split = chain.strategy("attention.from_heads", required=False)
    if split is not None:  # its input is the [B, N, S, D] context
        chain.take(Sharded(ctx.shards, (ctx.layout[0], ctx.layout[2], None, None)), layout_of(split[0], "from_heads"),
                   "attention.from_heads", "attention.core.pv_matmul")
    ctx = ctx.map(lambda t: t.reshape(-1, t.shape[2] * d), (ctx.layout[0], ctx.layout[2]))  # [T, H]
    attn = project("attention.linear_out", ctx, "attention.from_heads", "wo", "bo")
    h1 = chain.add("ln2.residual_add", h0, "layer input", attn, "attention.linear_out")
    x2 = _layer_norm(h1, w["ln2_gamma"], w["ln2_beta"], cfg.layernorm_eps, "ln2")
    f = project("ffn.linear_fc1", x2, "ln2", "w1", "b1").map(_gelu)  # the activation is elementwise
    f = project("ffn.linear_fc2", f, "ffn.activation", "w2", "b2")
    return chain.add("residual_ffn", h1, "ln2.residual_add", f, "ffn.linear_fc2")


def getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _build(strategies: dict | None = None):
    cfg = tiny_model_config(num_heads=4, vocab_size=96, kernels="reference")
    par = ParallelConfig(dp=DP, mp=MP, vocab_emb_dp=False)
    plan = plan_for(cfg, par)
    if strategies:
        plan = dataclasses.replace(plan, strategies={**plan.strategies, **strategies})
    ms.set_seed(3)
    return parallelize(PanguAlphaWithLoss(cfg), plan, par), cfg


@pytest.fixture(scope="module")
def model():
    return _build()


def _inputs(cfg, seed: int):
    rng = np.random.default_rng(seed)
    s = cfg.seq_length
    h = rng.standard_normal((B * s, cfg.hidden_size))
    causal = np.tril(np.ones((s, s)))
    bias = np.broadcast_to(np.where(causal > 0, 0.0, -1e4), (B, 1, s, s)).copy()
    return h, bias, rng.standard_normal((B * s, cfg.hidden_size))


@pytest.mark.parametrize("which", ["block", "query_layer"])
def test_a_layer_runs_through_its_plan_with_only_the_implied_all_reduces(model, which):
    net, cfg = model
    layer = net.lm.backbone.blocks[0] if which == "block" else net.lm.backbone.query_layer
    prefix = "lm.backbone.blocks.0" if which == "block" else "lm.backbone.query_layer"
    h, bias, query = _inputs(cfg, 0)
    chain = Chain(net, prefix)
    out = run_layer(chain, layer, cfg, h, bias, query if which == "query_layer" else None)
    assert not chain.redistributions, chain.redistributions
    assert chain.collectives == ["all-reduce over mp in attention.linear_out.matmul",
                                 "all-reduce over mp in ffn.linear_fc2.matmul"]
    assert len(chain.checked) >= 20
    # the layer's own forward (fp32) on the same input
    args = [Tensor(h.astype(np.float32))] + ([Tensor(query.astype(np.float32))] if which == "query_layer" else [])
    want = layer(*args, Tensor(bias.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(out.gather(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("changed,expected", [
    ({"lm.backbone.blocks.*.attention.core.qk_matmul": (("batch", None, None, None), ("batch", None, None, None))},
     "gives ('dp', 'mp', None, None) but attention.core.qk_matmul takes ('dp', None, None, None)"),
    ({"lm.backbone.blocks.*.attention.linear_out.matmul": (("batch", None), (None, "heads"))},
     "attention.from_heads gives ('dp', 'mp') but attention.linear_out.matmul takes ('dp', None)"),
    ({"lm.backbone.blocks.*.ffn.linear_fc2.matmul": (("batch", None), (None, None))},
     "ffn.activation gives ('dp', 'mp') but ffn.linear_fc2.matmul takes ('dp', None)"),
], ids=["heads-not-split-in-qk", "out-projection-column-parallel", "fc2-replicated"])
def test_an_inconsistent_strategy_shows_as_a_redistribution(changed, expected):
    """A plan whose consecutive layouts do not fit is caught, even though every single
    sharded matmul still recombines to the right product."""
    net, cfg = _build(changed)
    h, bias, _ = _inputs(cfg, 1)
    chain = Chain(net, "lm.backbone.blocks.0")
    out = run_layer(chain, net.lm.backbone.blocks[0], cfg, h, bias, None)
    assert any(expected in r for r in chain.redistributions), chain.redistributions
    want = net.lm.backbone.blocks[0](Tensor(h.astype(np.float32)), Tensor(bias.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(out.gather(), want, rtol=1e-4, atol=1e-4)  # the numbers still agree


def test_the_checker_refuses_mismatched_reduction_splits():
    chain = Chain(_build()[0], "lm.backbone.blocks.0")
    a = Sharded.scatter(np.ones((8, 8)), ("dp", "mp"))
    b = Sharded.scatter(np.ones((8, 4)), (None, None))
    with pytest.raises(AssertionError, match="reduction dim is split by mp in one operand and None"):
        chain.matmul("attention.linear_out.matmul", a, "x", b)
