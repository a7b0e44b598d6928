"""Cached decoding equals full recompute; one prompt graph per shape and one step graph."""
from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from pangu_testing import LM_SEQ as SEQ
from pangu_testing import require_cpu_kernels
from pangu_ms.infer.decode_ops import CpuStepOps, StepOps
from pangu_ms.infer.decoder import CacheFullError, GenerationError, IncrementalDecoder, left_pad
from pangu_ms.infer.kv_cache import DecoderCore, ExportStep, KVCache, StepCell, weight_groups


@pytest.fixture(scope="session")
def full_logits(tiny_lm):
    """Full recompute with the model itself: logits [V] after `seq`, one compiled [1, SEQ] graph.

    The prefix is right-padded to SEQ under a causal mask (one document), so position len-1
    sees exactly the prefix (what an unpadded forward over the prefix computes).
    """
    doc = Tensor(np.zeros((1, SEQ), np.int32))
    pos = Tensor(np.arange(SEQ, dtype=np.int32)[None])

    def run(seq: list[int]) -> np.ndarray:
        ids = np.full((1, SEQ), 6, np.int32)
        ids[0, :len(seq)] = seq
        return tiny_lm(Tensor(ids), pos, doc).asnumpy()[len(seq) - 1]

    return run


@pytest.fixture(scope="session")
def decoder1(tiny_lm) -> IncrementalDecoder:
    return IncrementalDecoder(tiny_lm, batch_size=1, max_length=SEQ, prompt_bucket=1)


@pytest.fixture(scope="session")
def decoder3(tiny_lm) -> IncrementalDecoder:
    return IncrementalDecoder(tiny_lm, batch_size=3, max_length=SEQ, prompt_bucket=4)


def _greedy_check(dec: IncrementalDecoder, prompts: list[list[int]], full_logits) -> tuple[float, int]:
    """Decode greedily until the cache is full; max |cached - full| over all steps and rows."""
    seqs = [list(p) for p in prompts]
    logits = dec.start(prompts)
    worst, steps = 0.0, 0
    while True:
        for r, s in enumerate(seqs):
            worst = max(worst, float(np.abs(logits[r] - full_logits(s)).max()))
        if dec.remaining == 0:
            return worst, steps
        tok = logits.argmax(-1)
        for r, s in enumerate(seqs):
            s.append(int(tok[r]))
        logits = dec.step(tok)
        steps += 1


def test_the_default_decoder_runs_the_cpp_kernels(decoder1, decoder3):
    """The decoders compared with full recompute below use the C++ step kernels, not a silent
    fallback to the reference ops (which the reference-kernel test covers on its own)."""
    require_cpu_kernels()
    for dec in (decoder1, decoder3):
        ops_ = dec.core.step_ops
        assert type(ops_) is CpuStepOps and dec.core.cpu_kernels
        kernels = [ops_.cpu_linear, ops_.cpu_linear_residual, ops_.cpu_linear_gelu, ops_.cpu_head,
                   ops_.cpu_attention, ops_.cpu_write]
        assert all(k.fused for k in kernels), [type(k).__name__ for k in kernels if not k.fused]
        assert ops_.layer_norm.fused and ops_.gelu.fused


@pytest.mark.parametrize("length", [1, 5, SEQ - 1])
def test_cached_equals_full_recompute_unbatched(decoder1, full_logits, length):
    prompt = list(np.random.default_rng(length).integers(10, 96, length))
    worst, steps = _greedy_check(decoder1, [prompt], full_logits)
    assert steps == SEQ - length  # every slot up to the cache limit was decoded
    assert worst < 1e-4


def test_cached_equals_full_recompute_batched_ragged(decoder3, full_logits):
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(10, 96, n)) for n in (1, 6, 11)]
    worst, steps = _greedy_check(decoder3, prompts, full_logits)
    assert steps == SEQ - 12  # prompts left-padded to the bucket (12), then steps to the end
    assert worst < 1e-4


@pytest.mark.parametrize("fused", [False, True])
def test_reference_kernels_equal_full_recompute(tiny_lm, full_logits, fused):
    """The step graph without the C++ kernels agrees too: all reference compositions (the
    training model's ops), or MindSpore's fused LayerNorm/GELU with reference matmuls."""
    dec = IncrementalDecoder(tiny_lm, batch_size=2, max_length=SEQ, prompt_bucket=4, fused_kernels=fused,
                             cpu_kernels=False)
    assert type(dec.core.step_ops) is StepOps and not dec.core.cpu_kernels
    assert dec.core.step_ops.layer_norm.fused == dec.core.step_ops.gelu.fused == fused
    assert not dec.core.prompt_ops.layer_norm.fused  # the prompt graph: reference compositions
    worst, steps = _greedy_check(dec, [[21, 22, 23], [24]], full_logits)
    assert steps == SEQ - 4
    assert worst < 1e-4


def test_fewer_prompts_than_batch_and_reuse(decoder3, full_logits):
    """Dummy rows fill the batch; the decoder restarts cleanly for a new request."""
    worst, _ = _greedy_check(decoder3, [[11, 12, 13]], full_logits)
    assert worst < 1e-4
    worst, _ = _greedy_check(decoder3, [[40], [41, 42]], full_logits)
    assert worst < 1e-4


def test_step_graph_compiled_once(decoder3):
    decoder3.start([[5, 6, 7], [8]])
    for t in range(6):
        decoder3.step([t + 10, t + 20])
    assert len(decoder3.step_cell.compile_cache) == 1
    decoder3.start([[5, 6, 7, 8, 9]])  # longer prompt: another bucket, another prompt graph
    decoder3.step([1])
    assert len(decoder3.step_cell.compile_cache) == 1


def test_cache_enforces_max_length(tiny_lm):
    dec = IncrementalDecoder(tiny_lm, batch_size=1, max_length=6, prompt_bucket=1)
    dec.start([[1, 2, 3, 4]])
    dec.step([5])
    dec.step([6])
    assert dec.remaining == 0
    with pytest.raises(CacheFullError):
        dec.step([7])
    with pytest.raises(GenerationError, match="does not fit max_length=6"):
        dec.start([list(range(7))])
    with pytest.raises(GenerationError, match="seq_length"):
        IncrementalDecoder(tiny_lm, max_length=SEQ + 1)


def test_weight_groups_cover_every_model_parameter_once(tiny_lm, decoder3):
    """The decoder takes the model's Parameters by name (`PanguAlphaLM.weight_paths()`), each
    exactly once: a Parameter added to the model, or moved without updating its path, fails."""
    assert isinstance(decoder3.core.step_ops, CpuStepOps) == decoder3.core.cpu_kernels
    named = dict(tiny_lm.parameters_and_names())
    grouped = [getattr(g, role) for g in decoder3.core.parameter_groups() for role in g.roles]
    assert len(grouped) == len(named) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in named.values()}
    assert sorted(p.name for p in grouped) == sorted(named)  # names unchanged
    layer = decoder3.core.layers[0]
    assert layer.wq is tiny_lm.backbone.blocks[0].attention.linear_q.weight
    assert decoder3.core.layers[-1].w2 is tiny_lm.backbone.query_layer.ffn.linear_fc2.weight


def test_a_moved_parameter_path_fails_loudly(tiny_lm, monkeypatch):
    paths = tiny_lm.weight_paths()
    moved = dict(paths.layer, wq="attention.query.weight")
    monkeypatch.setattr(type(tiny_lm), "weight_paths", lambda self: type(paths)(paths.model, paths.layers, moved))
    with pytest.raises(KeyError, match="backbone.blocks.0.attention.query.weight"):
        weight_groups(tiny_lm)


def test_graph_cells_check_the_cache_mode(tiny_lm):
    cache = KVCache(tiny_lm.config.num_layers, 1, tiny_lm.config.num_heads, 8, tiny_lm.config.head_dim)
    with pytest.raises(ValueError, match="in_place_cache=True"):
        StepCell(DecoderCore(tiny_lm, 8, in_place_cache=False), cache)
    with pytest.raises(ValueError, match="in_place_cache=False"):
        ExportStep(DecoderCore(tiny_lm, 8))


def test_weights_shared_not_copied(tiny_lm, decoder3):
    """The decoder reads the model's own Parameters: names unchanged, updates visible."""
    names = {p.name for p in tiny_lm.get_parameters()}
    assert "backbone.blocks.0.attention.linear_q.weight" in names
    cache_names = {p.name for p in decoder3.cache.get_parameters()}
    assert cache_names.isdisjoint(names)
    before = decoder3.start([[3, 4]])
    bias = tiny_lm.backbone.query_layer.ffn.linear_fc2.bias
    old = bias.asnumpy().copy()
    bias.set_data(Tensor(old + 1.0))
    try:
        after = decoder3.start([[3, 4]])
    finally:
        bias.set_data(Tensor(old))
    assert not np.allclose(before, after)


class _AssignCell(nn.Cell):
    """Updates a Parameter inside a graph, in place, as an optimizer step does."""

    def __init__(self, param):
        super().__init__()
        self.param = param

    def construct(self, value):
        return ops.assign(self.param, value)


def test_steps_see_weight_updates(tiny_lm, full_logits):
    """The step graph reads the weights through views taken at `start`: replaced data
    (set_data, checkpoint loading) and in-place updates both reach the cached steps."""
    dec = IncrementalDecoder(tiny_lm, batch_size=1, max_length=SEQ, prompt_bucket=1)
    before = dec.start([[3, 4, 5]])
    stepped = dec.step([7])
    bias = tiny_lm.backbone.blocks[0].attention.linear_v.bias  # used by every step
    old = bias.asnumpy().copy()
    try:
        bias.set_data(Tensor(old + 0.5))
        assert not np.allclose(dec.start([[3, 4, 5]]), before)
        assert not np.allclose(dec.step([7]), stepped)
        worst, _ = _greedy_check(dec, [[3, 4, 5]], full_logits)
        assert worst < 1e-4
        _AssignCell(bias)(Tensor(old - 0.5))
        worst, _ = _greedy_check(dec, [[3, 4, 5]], full_logits)
        assert worst < 1e-4
    finally:
        bias.set_data(Tensor(old))


def test_left_pad_positions():
    ids, pos, pad = left_pad([[7, 8, 9], [5]], 4, pad_id=6)
    np.testing.assert_array_equal(ids, [[6, 7, 8, 9], [6, 6, 6, 5]])
    np.testing.assert_array_equal(pos, [[0, 0, 1, 2], [0, 0, 0, 0]])
    np.testing.assert_array_equal(pad, [1, 3])


def test_generate_stop_ids_length_and_cache_limit(decoder1):
    from pangu_ms.infer.generate import generate
    from pangu_ms.infer.sampling import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    (free,) = generate(decoder1, [[20, 21, 22]], greedy, max_new_tokens=5)
    assert free.finish_reason == "length" and len(free.tokens) == 5
    (stopped,) = generate(decoder1, [[20, 21, 22]], greedy, max_new_tokens=5, stop_ids=(free.tokens[2],))
    assert stopped.finish_reason == "stop" and stopped.tokens == free.tokens[:free.tokens.index(free.tokens[2])]
    (full,) = generate(decoder1, [[20, 21, 22]], greedy, max_new_tokens=100)
    assert full.finish_reason == "cache_full" and len(full.tokens) == SEQ - 3 + 1
    assert full.tokens[:5] == free.tokens  # same greedy path
