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

The decoder is derived from the model: `DecoderCore` takes the model's Parameters by role from
`PanguAlphaLM.weight_paths()` (one `WeightGroup` per layer: `layer.wq`, `layer.ln1_gamma`, ...),
masks with the model's rule (causal within the real tokens: `window_bias`) and attends with the
reference `CoreAttention`. Why the
layer equations are still written out here instead of calling the model's sub-cells: the
cache needs each layer's K and V, and at one token per step a graph's cost is its op count,
its Parameter reads and its launch overhead, not arithmetic. The equations are written once,
in `DecoderCore._layers`, against an op set chosen per graph at construction
(`pangu_ms.infer.decode_ops`): the prompt graph's `PromptOps` are the reference compositions
(from 32 tokens on they are faster: tiny model, 128 tokens, 29 ms against 37 ms with fused
LayerNorm/GELU); the step graph's `CpuStepOps` use MindSpore's single LayerNorm kernel and C++
kernels for every weight product (bias, GELU and residual adds fused in), the one-token
attention (masking from slot and pad_len itself) and an in-place write of the new slot
(MindSpore's ScatterNdUpdate copies the whole cache per call). That is 52 ops per step for the
4-layer tiny model, against about 200 in the model's own graph. Without the C++ kernels
(`cpu_kernels=False`, fp16, no compiler) the step graph runs `StepOps`: reference forms,
LayerNorm and GELU fused unless `fused_kernels=False`. Tests compare every step with the
training model's forward.

`ExportPrefill` / `ExportStep` are the same graphs with the cache as explicit inputs and
outputs (stacked [L, B, N, M, D]), for `mindspore.export` to MindIR (`ExportStep` needs a
core built with `in_place_cache=False`).
"""
from __future__ import annotations

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn
from mindspore.ops import operations as P

from pangu_ms.infer.decode_ops import CpuStepOps, PromptOps, flash_decoding, step_ops
from pangu_ms.models.pangu_alpha import PanguAlphaLM


class WeightGroup(nn.Cell):
    """Parameters by role as attributes (`wq`, `ln1_gamma`, ...): the model's own objects, names
    unchanged (auto_prefix off). `roles` lists them in order."""

    def __init__(self, params: dict[str, Parameter]):
        super().__init__(auto_prefix=False)
        for role, param in params.items():
            setattr(self, role, param)
        self.roles = tuple(params)


def weight_groups(lm: PanguAlphaLM) -> tuple[WeightGroup, list[WeightGroup]]:
    """The Parameters of `lm` grouped by `lm.weight_paths()`, looked up by name:
    (embeddings and final LayerNorm, one group per layer: the blocks, then the query layer)."""
    named = dict(lm.parameters_and_names())
    paths = lm.weight_paths()

    def group(prefix: str, roles: dict[str, str]) -> WeightGroup:
        missing = [prefix + path for path in roles.values() if prefix + path not in named]
        if missing:
            raise KeyError(f"PanguAlphaLM.weight_paths() names {missing}, which the model does not have: "
                           "update pangu_ms.models.pangu_alpha MODEL_WEIGHTS / LAYER_WEIGHTS with the model")
        return WeightGroup({role: named[prefix + path] for role, path in roles.items()})

    return group("", paths.model), [group(f"{layer}.", paths.layer) for layer in paths.layers]


class DecoderCore(nn.Cell):
    """The layer stack of a `PanguAlphaLM` evaluated against caches (functional: caches are
    tuples of L tensors [B, N, M, D] in and out). Holds the model's Parameters, no state of
    its own. `batch_size` is B of every call. `fused_kernels` switches the step graph's fused
    kernels on, `cpu_kernels` the C++ ones among them (fp32 models only; off for a portable
    MindIR export). `in_place_cache=False` makes `step` take and return the caches as values
    (MindIR export) instead of writing cache Parameters in place."""

    def __init__(self, lm: PanguAlphaLM, max_length: int, *, batch_size: int = 1, fused_kernels: bool = True,
                 cpu_kernels: bool = True, in_place_cache: bool = True):
        super().__init__(auto_prefix=False)
        cfg = lm.config
        if not 1 <= max_length <= cfg.seq_length:
            raise ValueError(f"max_length={max_length} must be in [1, seq_length={cfg.seq_length}]")
        self.max_length = max_length
        self.num_layers = cfg.num_layers
        self.model_weights, layers = weight_groups(lm)
        self.layers = nn.CellList(layers, auto_prefix=False)
        spec = lm.kernel_spec  # the device (and chip) the model was built for
        self.prompt_ops = PromptOps(cfg, max_length=max_length,
                                    flash=fused_kernels and flash_decoding(cfg, spec.device, spec.chip))
        self.step_ops = step_ops(cfg, batch_size=batch_size, max_length=max_length, fused=fused_kernels,
                                 cpu=cpu_kernels, in_place=in_place_cache, device=spec.device, chip=spec.chip)
        self.cpu_kernels = isinstance(self.step_ops, CpuStepOps)
        self.gather = P.Gather()

    def parameter_groups(self) -> list[WeightGroup]:
        """Every weight group: the embeddings and final LayerNorm, then one per layer."""
        return [self.model_weights, *self.layers]

    def _embed(self, input_ids, position_ids):
        """ids, positions [B, S] -> hidden [B*S, H] and the top query embedding [B*S, H]."""
        w = self.model_weights
        b, s = input_ids.shape
        h = self.gather(w.word_table, input_ids, 0) + self.gather(w.position_table, position_ids, 0)  # [B, S, H]
        query = self.gather(w.top_query_table, position_ids, 0).reshape(b * s, -1)  # [B*S, H]
        return h.reshape(b * s, -1), query

    def _layers(self, ops, h, query, k_caches, v_caches, state):
        """The model's layers (`pangu_ms.models.pangu_alpha` data flow) with the op set `ops`:
        h, query [T, H], caches (L each; `ops.attend` writes the new K/V) -> h [T, H], caches."""
        last = self.num_layers - 1
        ks, vs = (), ()
        for i in range(self.num_layers):
            w = self.layers[i]
            if i == last:
                h = ops.norm(h, self.model_weights.final_ln_gamma, self.model_weights.final_ln_beta)
            x = ops.norm(h, w.ln1_gamma, w.ln1_beta)
            q_in = x
            if i == last:  # the query layer's query is the top query embedding, not normalised
                q_in = query
            q, k, v = ops.linear(q_in, w.wq, w.bq), ops.linear(x, w.wk, w.bk), ops.linear(x, w.wv, w.bv)
            ctx, k, v = ops.attend(q, k, v, k_caches[i], v_caches[i], state)  # ctx [T, H]
            h = ops.linear_residual(ctx, w.wo, w.bo, h)
            x = ops.linear_gelu(ops.norm(h, w.ln2_gamma, w.ln2_beta), w.w1, w.b1)  # [T, F]
            h = ops.linear_residual(x, w.w2, w.b2, h)
            ks, vs = ks + (k,), vs + (v,)
        return h, ks, vs

    def prefill(self, input_ids, position_ids, pad_len):
        """ids, positions [B, S], pad_len [B] -> last-slot logits [B, V], k, v caches [B, N, M, D]."""
        b, s = input_ids.shape
        h, query = self._embed(input_ids, position_ids)
        no_cache = (None,) * self.num_layers
        state = self.prompt_ops.begin(pad_len, b, s)
        h, ks, vs = self._layers(self.prompt_ops, h, query, no_cache, no_cache, state)
        last = h.reshape(b, s, -1)[:, s - 1]  # [B, H]
        return self.prompt_ops.head(last, self.model_weights.word_table), ks, vs

    def step(self, input_ids, position_ids, slot, pad_len, k_caches, v_caches):
        """ids, positions [B, 1], slot [] int32, pad_len [B], caches [B, N, M, D] (the cache
        Parameters unless `in_place_cache=False`) -> logits [B, V], updated caches."""
        h, query = self._embed(input_ids, position_ids)  # [B, H]
        h, ks, vs = self._layers(self.step_ops, h, query, k_caches, v_caches, self.step_ops.begin(slot, pad_len))
        return self.step_ops.head(h, self.model_weights.word_table), ks, vs


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


def _check_cache_mode(core: DecoderCore, in_place: bool, cell: str) -> None:
    if core.step_ops.in_place != in_place:
        raise ValueError(f"{cell} needs a DecoderCore built with in_place_cache={in_place}")


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
        _check_cache_mode(core, True, "StepCell (writes the cache Parameters in place)")
        self.core, self.cache = core, cache

    def construct(self, input_ids, position_ids, slot, pad_len):
        logits, _, _ = self.core.step(input_ids, position_ids, slot, pad_len, self.cache.k, self.cache.v)
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
        _check_cache_mode(core, False, "ExportStep (caches as graph inputs and outputs)")
        self.core = core
        self.stack = P.Stack(axis=0)
        self.unstack = P.Unstack(axis=0)

    def construct(self, input_ids, position_ids, slot, pad_len, k_cache, v_cache):
        logits, ks, vs = self.core.step(input_ids, position_ids, slot, pad_len, self.unstack(k_cache),
                                        self.unstack(v_cache))
        return logits, self.stack(ks), self.stack(vs)
