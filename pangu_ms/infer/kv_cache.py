"""Incremental decoding for PanGu-alpha with a per-layer key/value cache.

Notation: B batch, S prompt length, M cache length (the maximum total length), H hidden,
N heads, D head dim, V vocab, L layers (blocks plus the top query layer).

Two compiled graphs share the weights of a trained `PanguAlphaLM` (its sub-cells are reused,
nothing is copied) and one set of cache Parameters:

- `PrefillCell(input_ids [B, S], position_ids [B, S], pad_len [B])`: runs the whole prompt,
  writes every layer's K/V for slots 0..S-1 (the rest of the cache is zeroed) and returns the
  logits of the last slot [B, V];
- `StepCell(input_ids [B, 1], position_ids [B, 1], slot [] int32, pad_len [B])`: writes one
  token's K/V at `slot` and returns its logits [B, V].

Prompts of different lengths are LEFT-padded to a common length: row b's prompt occupies
slots pad_len[b]..S-1, so every row's next token goes to the same slot and one step graph
serves the whole batch. Keys at slots below pad_len[b] are masked out and each row's position
ids count from its first real token, so a padded row computes exactly what the model
computes on that row alone. The slot and positions are Tensors: a Python int would
recompile the step graph every token (MINDSPORE_CPU_NOTES.md item 3c).

`ExportPrefill` / `ExportStep` are the same graphs with the cache as explicit inputs and
outputs (stacked [L, B, N, M, D]), for `mindspore.export` to MindIR.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.ops import operations as P

from pangu_ms.models.pangu_alpha import PanguAlphaLM

_BLOCKED = -10000.0  # the model's additive mask value (PanguAlpha.attention_bias)


class _CachedAttention(nn.Cell):
    """Attention of one layer reading and writing a K/V cache; reuses the model's `Attention`.

    The projections, head split, core (scores, fp32 softmax, context) and output projection
    are the model's own sub-cells, so the math is the training math.
    """

    def __init__(self, attention: nn.Cell):
        super().__init__(auto_prefix=False)  # keep the shared parameters' names
        self.attn = attention
        self.concat = P.Concat(axis=2)
        self.select = P.Select()

    def _qkv(self, query_in, kv_in, batch: int, seq: int):
        """query_in, kv_in [B*S, H] -> q, k, v [B, N, S, D] (q pre-scaled by 1/sqrt(D))."""
        a = self.attn
        q = a.split_heads(a.scale_q(a.linear_q(query_in), a.scale), batch, seq)  # [B, N, S, D]
        k = a.split_heads(a.linear_k(kv_in), batch, seq)  # [B, N, S, D]
        v = a.split_heads(a.linear_v(kv_in), batch, seq)  # [B, N, S, D]
        return q, k, v

    def _out(self, q, k, v, bias):
        ctx, _ = self.attn.core(q, k, v, bias)  # [B, N, S, D]
        return self.attn.linear_out(self.attn.merge_heads(ctx))  # [B*S, H]

    def prefill(self, query_in, kv_in, bias, cache_pad):
        """Whole prompt: -> out [B*S, H], k and v caches [B, N, M, D] (slots >= S zero)."""
        batch, seq = bias.shape[0], bias.shape[-1]
        q, k, v = self._qkv(query_in, kv_in, batch, seq)
        out = self._out(q, k, v, bias)
        return out, self.concat((k, cache_pad)), self.concat((v, cache_pad))

    def step(self, query_in, kv_in, bias, write, k_cache, v_cache):
        """One token: write [1, 1, M, 1] bool marks the slot; -> out [B, H], caches [B, N, M, D]."""
        batch = bias.shape[0]
        q, k, v = self._qkv(query_in, kv_in, batch, 1)  # [B, N, 1, D]
        k_cache = self.select(write, k.broadcast_to(k_cache.shape), k_cache)  # [B, N, M, D]
        v_cache = self.select(write, v.broadcast_to(v_cache.shape), v_cache)
        return self._out(q, k_cache, v_cache, bias), k_cache, v_cache


class DecoderCore(nn.Cell):
    """The layer stack of a `PanguAlphaLM` evaluated against caches (functional: caches are
    tuples of L tensors [B, N, M, D] in and out). Holds no state of its own."""

    def __init__(self, lm: PanguAlphaLM, max_length: int):
        super().__init__(auto_prefix=False)
        cfg = lm.config
        if not 1 <= max_length <= cfg.seq_length:
            raise ValueError(f"max_length={max_length} must be in [1, seq_length={cfg.seq_length}]")
        self.lm = lm
        self.max_length = max_length
        self.num_layers = cfg.num_layers
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        bb = lm.backbone
        self.attns = nn.CellList([_CachedAttention(b.attention) for b in bb.blocks]
                                 + [_CachedAttention(bb.query_layer.attention)], auto_prefix=False)
        self.slots = Tensor(np.arange(max_length, dtype=np.int32))  # [M]
        self.less_equal = P.LessEqual()
        self.greater_equal = P.GreaterEqual()
        self.logical_and = P.LogicalAnd()
        self.cast = P.Cast()

    def _bias(self, query_slots, key_slots, pad_len):
        """Additive bias [B, 1, Q, K]: a query at slot i sees keys j with pad_len[b] <= j <= i."""
        causal = self.less_equal(key_slots.reshape(1, 1, 1, -1), query_slots.reshape(1, 1, -1, 1))
        real = self.greater_equal(key_slots.reshape(1, 1, 1, -1), pad_len.reshape(-1, 1, 1, 1))
        ok = self.logical_and(causal, real)  # [B, 1, Q, K]
        return (1.0 - self.cast(ok, ms.float32)) * _BLOCKED  # as PanguAlpha.attention_bias

    def _embed(self, input_ids, position_ids):
        """-> hidden [B*S, H] and the top query embedding [B*S, H]."""
        bb = self.lm.backbone
        b, s = input_ids.shape
        h = bb.embedding_add(bb.word_embedding(input_ids), bb.position_embedding(position_ids))
        query = bb.top_query_embedding(position_ids).reshape(b * s, -1)  # [B*S, H]
        return h.reshape(b * s, -1), query  # [B*S, H]

    def prefill(self, input_ids, position_ids, pad_len):
        """ids, positions [B, S], pad_len [B] -> last-slot logits [B, V], k and v cache tuples."""
        b, s = input_ids.shape
        bias = self._bias(self.slots[:s], self.slots[:s], pad_len)  # [B, 1, S, S]
        cache_pad = ops.zeros((b, self.heads, self.max_length - s, self.head_dim), ms.float32)
        h, query = self._embed(input_ids, position_ids)
        ks, vs = [], []
        bb = self.lm.backbone
        for i, block in enumerate(bb.blocks):
            x = block.ln1(h)
            out, k, v = self.attns[i].prefill(x, x, bias, cache_pad)
            ks.append(k)
            vs.append(v)
            h = block.residual_attn(h, out)
            h = block.residual_ffn(h, block.ffn(block.ln2(h)))
        h = bb.final_ln(h)
        ql = bb.query_layer
        out, k, v = self.attns[self.num_layers - 1].prefill(query, ql.ln1(h), bias, cache_pad)
        ks.append(k)
        vs.append(v)
        h = ql.residual_attn(h, out)
        h = ql.residual_ffn(h, ql.ffn(ql.ln2(h)))  # [B*S, H]
        last = h.reshape(b, s, -1)[:, s - 1]  # [B, H]
        return self.lm.logits(last), tuple(ks), tuple(vs)

    def step(self, input_ids, position_ids, slot, pad_len, k_caches, v_caches):
        """ids, positions [B, 1], slot [] int32, pad_len [B], caches -> logits [B, V], caches."""
        bias = self._bias(slot.reshape(1), self.slots, pad_len)  # [B, 1, 1, M]
        write = (self.slots == slot).reshape(1, 1, -1, 1)  # [1, 1, M, 1]
        h, query = self._embed(input_ids, position_ids)  # [B, H]
        ks, vs = [], []
        bb = self.lm.backbone
        for i, block in enumerate(bb.blocks):
            x = block.ln1(h)
            out, k, v = self.attns[i].step(x, x, bias, write, k_caches[i], v_caches[i])
            ks.append(k)
            vs.append(v)
            h = block.residual_attn(h, out)
            h = block.residual_ffn(h, block.ffn(block.ln2(h)))
        h = bb.final_ln(h)
        ql = bb.query_layer
        i = self.num_layers - 1
        out, k, v = self.attns[i].step(query, ql.ln1(h), bias, write, k_caches[i], v_caches[i])
        ks.append(k)
        vs.append(v)
        h = ql.residual_attn(h, out)
        h = ql.residual_ffn(h, ql.ffn(ql.ln2(h)))  # [B, H]
        return self.lm.logits(h), tuple(ks), tuple(vs)


class KVCache(nn.Cell):
    """The cache Parameters: per layer K and V [B, N, M, D], fp32, not trainable."""

    def __init__(self, num_layers: int, batch: int, heads: int, max_length: int, head_dim: int):
        super().__init__(auto_prefix=False)
        shape = (batch, heads, max_length, head_dim)

        def make(kind: str, i: int) -> Parameter:
            return Parameter(Tensor(np.zeros(shape, np.float32)), name=f"kv_cache.{kind}.{i}", requires_grad=False)

        self.k = ParameterTuple([make("k", i) for i in range(num_layers)])
        self.v = ParameterTuple([make("v", i) for i in range(num_layers)])
        self.num_layers = num_layers
        self.assign = P.Assign()

    def store(self, ks, vs):
        """Assign new cache tensors to the Parameters; returns a token to depend on."""
        done = ()
        for i in range(self.num_layers):
            done = done + (self.assign(self.k[i], ks[i]), self.assign(self.v[i], vs[i]))
        return done


class PrefillCell(nn.Cell):
    """Graph 1: the prompt. (ids [B, S], positions [B, S], pad_len [B]) -> logits [B, V]."""

    def __init__(self, core: DecoderCore, cache: KVCache):
        super().__init__(auto_prefix=False)
        self.core, self.cache = core, cache
        self.depend = P.Depend()

    def construct(self, input_ids, position_ids, pad_len):
        logits, ks, vs = self.core.prefill(input_ids, position_ids, pad_len)
        return self.depend(logits, self.cache.store(ks, vs))


class StepCell(nn.Cell):
    """Graph 2: one token. (ids [B, 1], positions [B, 1], slot [], pad_len [B]) -> logits [B, V]."""

    def __init__(self, core: DecoderCore, cache: KVCache):
        super().__init__(auto_prefix=False)
        self.core, self.cache = core, cache
        self.depend = P.Depend()

    def construct(self, input_ids, position_ids, slot, pad_len):
        logits, ks, vs = self.core.step(input_ids, position_ids, slot, pad_len, self.cache.k, self.cache.v)
        return self.depend(logits, self.cache.store(ks, vs))


class ExportPrefill(nn.Cell):
    """Stateless prompt graph for MindIR: -> logits [B, V], k, v caches [L, B, N, M, D]."""

    def __init__(self, core: DecoderCore):
        super().__init__(auto_prefix=False)
        self.core = core
        self.stack = P.Stack(axis=0)

    def construct(self, input_ids, position_ids, pad_len):
        logits, ks, vs = self.core.prefill(input_ids, position_ids, pad_len)
        return logits, self.stack(ks), self.stack(vs)


class ExportStep(nn.Cell):
    """Stateless step graph for MindIR: (ids, positions, slot, pad_len, k, v [L, B, N, M, D])
    -> logits [B, V], updated k, v."""

    def __init__(self, core: DecoderCore):
        super().__init__(auto_prefix=False)
        self.core = core
        self.stack = P.Stack(axis=0)
        self.unstack = P.Unstack(axis=0)

    def construct(self, input_ids, position_ids, slot, pad_len, k_cache, v_cache):
        logits, ks, vs = self.core.step(input_ids, position_ids, slot, pad_len,
                                        self.unstack(k_cache), self.unstack(v_cache))
        return logits, self.stack(ks), self.stack(vs)
