"""Incremental decoding for PanGu-alpha with a per-layer key/value cache.

Notation: B batch, S prompt length, M cache length (the maximum total length), H hidden,
N heads, D head dim, V vocab, L layers (blocks plus the top query layer).

Two compiled graphs share the weights of a trained `PanguAlphaLM` (its Parameters are reused,
nothing is copied) and one set of cache Parameters:

- `PrefillCell(input_ids [B, S], position_ids [B, S], pad_len [B])`: runs the whole prompt,
  writes every layer's K/V for slots 0..S-1 (the rest of the cache is zeroed) and returns the
  logits of the last slot [B, V];
- `StepCell(input_ids [B, 1], position_ids [B, 1], slot [] int32, pad_len [B])`: writes one
  token's K/V at `slot` in place and returns its logits [B, V].

Prompts of different lengths are LEFT-padded to a common length: row b's prompt occupies
slots pad_len[b]..S-1, so every row's next token goes to the same slot and one step graph
serves the whole batch. Keys at slots below pad_len[b] are masked out and each row's position
ids count from its first real token, so a padded row computes exactly what the model
computes on that row alone. The slot and positions are Tensors: a Python int would
recompile the step graph every token (MINDSPORE_CPU_NOTES.md item 3c).

Why the layer math is written out here instead of calling the model's sub-cells: at one
token per step a graph's cost is its op count, its Parameter reads and its launch overhead,
not arithmetic. `DecoderCore` is one flat Cell holding the model's own Parameters (one
ParameterTuple, names unchanged) that runs the equations of `pangu_ms.models.pangu_alpha`
(calling a Cell walks all its sub-cells in Python, about 30 us each, and the model has 80).
The step graph uses fused kernels (`pangu_ms.kernels`, switch `fused_kernels`): MindSpore's
single LayerNorm kernel, and C++ kernels (`cpu_kernels`) for every weight product (bias,
GELU and residual adds fused in), the one-token attention (masking from slot and pad_len
itself) and an in-place write of the new slot (MindSpore's ScatterNdUpdate copies the whole
cache per call). That is 52 ops per step for the 4-layer tiny model, against about 200 in
the model's own graph. The prompt graph keeps the reference compositions: from 32 tokens on
they are faster (tiny model, 128 tokens: 29 ms against 37 ms with fused LayerNorm/GELU).
Tests compare every step with the training model's forward.

`ExportPrefill` / `ExportStep` are the same graphs with the cache as explicit inputs and
outputs (stacked [L, B, N, M, D]), for `mindspore.export` to MindIR.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.ops import operations as P

from pangu_ms.kernels import (CacheWriteKernel, DecodeAttentionKernel, GeluKernel, LayerNormKernel, LinearGeluKernel,
                              LinearKernel, LinearResidualKernel, TiedHeadKernel)
from pangu_ms.models.layers import compute_dtype
from pangu_ms.models.pangu_alpha import PanguAlphaLM

_BLOCKED = -10000.0  # the model's additive mask value (PanguAlpha.attention_bias)

# DecoderCore.weights, in this order: the word table [V, H] (also the head), the position and
# top query tables [S_max, H], the final LN gamma and beta [H], then per layer (blocks, then
# the query layer) the Parameters at these paths; the constants below index them.
_WORD, _POSITION, _TOP_QUERY, _FINAL_GAMMA, _FINAL_BETA = range(5)
_FIRST_LAYER = 5
_LAYER_PATHS = ("ln1.gamma", "ln1.beta",
                "attention.linear_q.weight", "attention.linear_q.bias",
                "attention.linear_k.weight", "attention.linear_k.bias",
                "attention.linear_v.weight", "attention.linear_v.bias",
                "attention.linear_out.weight", "attention.linear_out.bias",
                "ln2.gamma", "ln2.beta",
                "ffn.linear_fc1.weight", "ffn.linear_fc1.bias",
                "ffn.linear_fc2.weight", "ffn.linear_fc2.bias")
_LN1_GAMMA, _LN1_BETA, _WQ, _BQ, _WK, _BK, _WV, _BV, _WO, _BO, _LN2_GAMMA, _LN2_BETA, _W1, _B1, _W2, _B2 = range(16)
_PER_LAYER = len(_LAYER_PATHS)


def model_weights(lm: PanguAlphaLM) -> list[Parameter]:
    """The Parameters of `lm` in `DecoderCore.weights` order (the objects themselves)."""
    bb = lm.backbone
    weights = [bb.word_embedding.embedding_table, bb.position_embedding.embedding_table,
               bb.top_query_embedding.embedding_table, bb.final_ln.gamma, bb.final_ln.beta]
    for layer in list(bb.blocks) + [bb.query_layer]:
        for path in _LAYER_PATHS:
            obj = layer
            for part in path.split("."):
                obj = getattr(obj, part)
            weights.append(obj)
    return weights


class DecoderCore(nn.Cell):
    """The layer stack of a `PanguAlphaLM` evaluated against caches (functional: caches are
    tuples of L tensors [B, N, M, D] in and out). Holds the model's Parameters, no state of
    its own. `batch_size` is B of every call. `fused_kernels` switches the step graph's fused
    kernels on, `cpu_kernels` the C++ ones among them (fp32 models only; off for a portable
    MindIR export)."""

    def __init__(self, lm: PanguAlphaLM, max_length: int, *, batch_size: int = 1, fused_kernels: bool = True,
                 cpu_kernels: bool = True):
        super().__init__(auto_prefix=False)
        cfg = lm.config
        if not 1 <= max_length <= cfg.seq_length:
            raise ValueError(f"max_length={max_length} must be in [1, seq_length={cfg.seq_length}]")
        self.max_length = max_length
        self.num_layers = cfg.num_layers
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.weights = ParameterTuple(model_weights(lm))  # the model's own Parameters
        self.low_precision = cfg.compute_dtype != "float32"
        self.dtype = compute_dtype(cfg.compute_dtype)
        self.prompt_norm = LayerNormKernel(eps=cfg.layernorm_eps, fused=False)
        self.prompt_gelu = GeluKernel(fused=False)
        self._step_kernels(cfg, batch_size, max_length, fused_kernels,
                           fused_kernels and cpu_kernels and not self.low_precision)
        self.slots = Tensor(np.arange(max_length, dtype=np.int32))  # [M]
        rows = np.zeros((batch_size, cfg.num_heads, 3), np.int32)  # (b, n, slot=0)
        rows[..., 0] = np.arange(batch_size)[:, None]
        rows[..., 1] = np.arange(cfg.num_heads)[None, :]
        self.write_base = Tensor(rows)  # [B, N, 3]
        self.slot_axis = Tensor(np.array([0, 0, 1], np.int32))  # adds the slot to the last coordinate
        self.gather = P.Gather()
        self.matmul = P.MatMul()
        self.vocab_proj = P.MatMul(transpose_b=True)
        self.qk_matmul = P.BatchMatMul(transpose_b=True)
        self.pv_matmul = P.BatchMatMul()
        self.softmax = P.Softmax(-1)
        self.transpose = P.Transpose()
        self.concat = P.Concat(axis=2)
        self.scatter_update = P.ScatterNdUpdate()  # in place on a Parameter (reference step)
        self.tensor_scatter_update = P.TensorScatterUpdate()  # functional (export)
        self.cast = P.Cast()

    def _step_kernels(self, cfg, batch_size: int, max_length: int, fused: bool, use_cpu: bool) -> None:
        """The step graph's kernels; `self.cpu_kernels` tells whether the C++ ones all run."""
        self.step_norm = LayerNormKernel(eps=cfg.layernorm_eps, fused=fused)
        self.step_gelu = GeluKernel(fused=fused)
        b, h, f = batch_size, cfg.hidden_size, cfg.ffn_hidden_size
        self.step_linear = LinearKernel(fused=use_cpu, out_shape=(b, h))  # q, k, v: [B, H] -> [B, H]
        self.step_linear_residual = LinearResidualKernel(fused=use_cpu, out_shape=(b, h))  # out, fc2 (+ h)
        self.step_linear_gelu = LinearGeluKernel(fused=use_cpu, out_shape=(b, f))  # fc1 + GELU: -> [B, F]
        self.step_head = TiedHeadKernel(fused=use_cpu, out_shape=(b, cfg.vocab_size))
        self.step_attention = DecodeAttentionKernel(max_length=max_length, head_dim=cfg.head_dim, fused=use_cpu,
                                                    out_shape=(b, h))
        self.step_write = CacheWriteKernel(batch_size=batch_size, heads=cfg.num_heads, fused=use_cpu)
        self.cpu_kernels = all(k.fused for k in (self.step_linear, self.step_linear_residual, self.step_linear_gelu,
                                                 self.step_head, self.step_attention, self.step_write))

    def _mm(self, x, w, matmul):
        """x @ w (or w^T) in the compute dtype, result fp32."""
        if self.low_precision:
            return self.cast(matmul(self.cast(x, self.dtype), self.cast(w, self.dtype)), ms.float32)
        return matmul(x, w)

    def _linear(self, x, w, b, one_token: bool):
        """x [T, in] @ w [in, out] + b -> [T, out] fp32 (models.layers.Linear)."""
        if one_token and self.cpu_kernels:
            return self.step_linear(x, w, b)
        return self._mm(x, w, self.matmul) + b

    def _norm(self, x, gamma, beta, one_token: bool):
        if one_token:
            return self.step_norm(x, gamma, beta)
        return self.prompt_norm(x, gamma, beta)

    def _bias(self, query_slots, key_slots, pad_len):
        """Additive bias [B, 1, Q, K]: a query at slot i sees keys j with pad_len[b] <= j <= i."""
        causal = key_slots.reshape(1, 1, 1, -1) <= query_slots.reshape(1, 1, -1, 1)
        real = key_slots.reshape(1, 1, 1, -1) >= pad_len.reshape(-1, 1, 1, 1)
        ok = ops.logical_and(causal, real)  # [B, 1, Q, K]
        return (1.0 - self.cast(ok, ms.float32)) * _BLOCKED  # as PanguAlpha.attention_bias

    def _embed(self, input_ids, position_ids, w):
        """-> hidden [B*S, H], the top query embedding [B*S, H] and the word table [V, H]."""
        word, position, top_query = w[_WORD], w[_POSITION], w[_TOP_QUERY]
        b, s = input_ids.shape
        h = self.gather(word, input_ids, 0) + self.gather(position, position_ids, 0)  # [B, S, H]
        query = self.gather(top_query, position_ids, 0).reshape(b * s, -1)  # [B*S, H]
        return h.reshape(b * s, -1), query, word

    def _qkv(self, i: int, h, query, w, one_token: bool):
        """Layer i's LN1 and projections: -> q, k, v [B*S, H] (q not yet scaled by 1/sqrt(D))."""
        at = _FIRST_LAYER + _PER_LAYER * i
        kv_in = self._norm(h, w[at + _LN1_GAMMA], w[at + _LN1_BETA], one_token)
        q_in = kv_in
        if i == self.num_layers - 1:  # the query layer's query is the top query embedding
            q_in = query
        q = self._linear(q_in, w[at + _WQ], w[at + _BQ], one_token)
        k = self._linear(kv_in, w[at + _WK], w[at + _BK], one_token)
        return q, k, self._linear(kv_in, w[at + _WV], w[at + _BV], one_token)

    def _attend(self, q, k, v, bias):
        """q [B, N, Q, D], k, v [B, N, K, D], bias [B, 1, Q, K] -> ctx [B, N, Q, D] fp32."""
        scores = self._mm(q * self.scale, k, self.qk_matmul)  # [B, N, Q, K] fp32
        probs = self.softmax(scores + bias)
        return self._mm(probs, v, self.pv_matmul)  # [B, N, Q, D]

    def _finish_layer(self, i: int, h, ctx, w, one_token: bool):
        """Residual attention output, then h + FFN(LN2(h)): ctx, h [T, H] -> h [T, H]."""
        at = _FIRST_LAYER + _PER_LAYER * i
        if one_token and self.cpu_kernels:  # projections fused with their bias, GELU and residual adds
            h = self.step_linear_residual(ctx, w[at + _WO], w[at + _BO], h)
            x = self.step_norm(h, w[at + _LN2_GAMMA], w[at + _LN2_BETA])
            x = self.step_linear_gelu(x, w[at + _W1], w[at + _B1])  # [T, F]
            return self.step_linear_residual(x, w[at + _W2], w[at + _B2], h)
        h = h + self._linear(ctx, w[at + _WO], w[at + _BO], one_token)
        x = self._norm(h, w[at + _LN2_GAMMA], w[at + _LN2_BETA], one_token)
        x = self._linear(x, w[at + _W1], w[at + _B1], one_token)  # [T, F]
        if one_token:
            x = self.step_gelu(x)
        else:
            x = self.prompt_gelu(x)
        return h + self._linear(x, w[at + _W2], w[at + _B2], one_token)

    def _logits(self, h, table, one_token: bool):
        """h [T, H] -> logits [T, V] with the tied word table."""
        if one_token and self.cpu_kernels:
            return self.step_head(h, table)
        return self._mm(h, table, self.vocab_proj)

    def _heads(self, x, b: int, s: int):
        """[B*S, H] -> [B, N, S, D]."""
        return self.transpose(x.reshape(b, s, self.heads, self.head_dim), (0, 2, 1, 3))

    def prefill(self, input_ids, position_ids, pad_len):
        """ids, positions [B, S], pad_len [B] -> last-slot logits [B, V], k, v caches [B, N, M, D]."""
        b, s = input_ids.shape
        bias = self._bias(self.slots[:s], self.slots[:s], pad_len)  # [B, 1, S, S]
        pad = ops.zeros((b, self.heads, self.max_length - s, self.head_dim), ms.float32)
        w = self.weights
        h, query, table = self._embed(input_ids, position_ids, w)
        ks, vs = [], []
        for i in range(self.num_layers):
            if i == self.num_layers - 1:
                h = self._norm(h, w[_FINAL_GAMMA], w[_FINAL_BETA], False)
            q, k, v = self._qkv(i, h, query, w, False)
            k, v = self._heads(k, b, s), self._heads(v, b, s)  # [B, N, S, D]
            ctx = self._attend(self._heads(q, b, s), k, v, bias)  # [B, N, S, D]
            ctx = self.transpose(ctx, (0, 2, 1, 3)).reshape(b * s, -1)  # [B*S, H]
            h = self._finish_layer(i, h, ctx, w, False)
            ks.append(self.concat((k, pad)))  # [B, N, M, D]
            vs.append(self.concat((v, pad)))
        last = h.reshape(b, s, -1)[:, s - 1]  # [B, H]
        return self._logits(last, table, False), tuple(ks), tuple(vs)

    def _write(self, cache, index, new, in_place: bool):
        """Put new [B, N, D] at index [B, N, 3] = (b, n, slot) of cache [B, N, M, D] -> the cache."""
        if in_place:
            return self.scatter_update(cache, index, new)
        return self.tensor_scatter_update(cache, index, new)

    def step(self, input_ids, position_ids, slot, pad_len, w, k_caches, v_caches, in_place: bool):
        """ids, positions [B, 1], slot [] int32, pad_len [B], weights w (`self.weights`), caches
        [B, N, M, D] (Parameters when `in_place`) -> logits [B, V], updated caches."""
        b = input_ids.shape[0]
        n, d = self.heads, self.head_dim
        bias = None
        if not self.cpu_kernels:  # the C++ attention kernel masks from slot and pad_len itself
            bias = self._bias(slot.reshape(1), self.slots, pad_len)  # [B, 1, 1, M]
        index = self.write_base + slot * self.slot_axis  # [B, N, 3]: (b, n, slot)
        h, query, table = self._embed(input_ids, position_ids, w)  # [B, H]
        ks, vs = [], []
        for i in range(self.num_layers):
            if i == self.num_layers - 1:
                h = self._norm(h, w[_FINAL_GAMMA], w[_FINAL_BETA], True)
            q, k, v = self._qkv(i, h, query, w, True)  # [B, H]; one token: [B, H] is [B, N, 1, D] as is
            if self.cpu_kernels and in_place:  # one C++ write of the slot, in place
                written = self.step_write(k_caches[i], v_caches[i], k.reshape(b, n, d), v.reshape(b, n, d), slot)
                k = ops.depend(k_caches[i], written)  # [B, N, M, D], read after the write
                v = ops.depend(v_caches[i], written)
            else:
                k = self._write(k_caches[i], index, k.reshape(b, n, d), in_place)  # [B, N, M, D]
                v = self._write(v_caches[i], index, v.reshape(b, n, d), in_place)
            if self.cpu_kernels:
                ctx = self.step_attention(q, k, v, slot, pad_len)  # [B, H]
            else:
                ctx = self._attend(q.reshape(b, n, 1, d), k, v, bias).reshape(b, -1)  # [B, H]
            h = self._finish_layer(i, h, ctx, w, True)
            ks.append(k)
            vs.append(v)
        return self._logits(h, table, True), tuple(ks), tuple(vs)


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
        """Assign whole caches [B, N, M, D] to the Parameters; returns a token to depend on."""
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

    def construct(self, input_ids, position_ids, slot, pad_len):
        logits, _, _ = self.core.step(input_ids, position_ids, slot, pad_len, self.core.weights, self.cache.k,
                                      self.cache.v, True)
        return logits


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
        logits, ks, vs = self.core.step(input_ids, position_ids, slot, pad_len, self.core.weights,
                                        self.unstack(k_cache), self.unstack(v_cache), False)
        return logits, self.stack(ks), self.stack(vs)
