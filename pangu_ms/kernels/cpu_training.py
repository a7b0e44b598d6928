"""CPU training kernels with backward passes: C++ `ops.Custom(func_type="aot")` operators.

Notation: B batch, N heads, S sequence, D head dim, T tokens (B*S), H hidden, F FFN width, V vocab.

- `BiasActivation(kind)`: (x [T, F], bias [F]) -> act(x + bias) in x's dtype; backward dx, dbias.
- `AddLayerNorm(eps)`: (x [T, H], residual [T, H] fp32, gamma, beta [H]) -> (s = residual + x,
  LayerNorm(s)), both fp32; backward dx, dresidual, dgamma, dbeta.
- `FlashAttention(head_dim)`: (q, k, v [B, N, S, D], doc_ids [B, S] int32) -> ctx [B, N, S, D] in
  q's dtype; backward dq, dk, dv from recomputed tiles.
- `TiedHeadCrossEntropy(pad_id)`: (h [T, H], table [V, H], labels [T] int32) -> mean NLL over the
  labels that are not pad_id, [] fp32; backward dh, dtable.
- `FusedAdamW(params, ...)`: (grads, factor, overflow, lr, step) -> applied [] bool, updating the
  weights and moments in place (below).
- `GradSquaredNorm()`: (grads) -> the sum of squares of every element, [] fp32.

The backward passes are aot kernels too, attached with `bprop`.

The sources are `kernels/cpu/training.cc` and its `train_*.h` headers, built on first use by
`pangu_ms.kernels.build` into the user's kernel cache. Every kernel is vectorised twice, AVX2
(+FMA, F16C) and AVX-512, in one library; `isa=None` runs the copy `training_isa()` picks for
this CPU (`PANGU_MS_CPU_ISA=avx2` forces AVX2), `isa="avx2"`/`"avx512"` one copy explicitly. The
kernels split work over a thread pool of one thread per CPU this process may use
(`PANGU_MS_KERNEL_THREADS` overrides), with results independent of the thread count. Inputs may be
fp32 or fp16 (widened on load, F16C or AVX-512 conversions); arithmetic and statistics are fp32.

The optimizer step, `FusedAdamW`, is one launch over all parameters:

    opt = FusedAdamW(params, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
                     decay=lambda name: not name.endswith((".bias", ".gamma", ".beta")),
                     bias_correction=False, fp16_copies=None)
    applied = opt(grads, factor, overflow, lr, step)

`params` are the fp32 master weights; `opt.moments1` / `opt.moments2` are their first and second
moments (fp32 Parameters named `adam_m.<name>` / `adam_v.<name>`, as `nn.AdamWeightDecay` names
them, so checkpoints carry over). Call arguments: `grads` a tuple like `params` (fp32 or fp16, still
loss-scaled), `factor` [] fp32 the multiplier applied to every gradient (1 / (loss scale x
accumulation steps) x the global-norm clip factor min(1, clip / norm)), `overflow` [] bool (True:
nothing is written, the step is skipped), `lr` [] fp32 and `step` [] int32, this update's number
from 1 (read only with `bias_correction=True`). Per parameter, with g = grad x factor:
m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr (m / (sqrt(v) + eps) + decay_p p), where
decay_p is `weight_decay` for the parameters `decay` selects (a name predicate, a list of bools,
or None for all) and 0 for the others; `bias_correction=True` divides m and v by (1 - b^step)
first (PyTorch's AdamW; `nn.AdamWeightDecay`, the default here, has none). With `fp16_copies`
(fp16 Parameters shaped like `params`) each copy receives fp16(p) in the same pass. The result is
True when the update was applied. The kernel updates the Parameters in place (the operator is
marked `side_effect_mem`, so MindSpore orders it among the graph's reads and writes of them like an
`Assign`); call it inside a Cell's `construct`, after the gradients. `GradSquaredNorm()(grads)`
gives the squared global norm those steps need (norm = sqrt(it) / loss scale; not finite means
overflow) in one launch instead of a cast, a multiply and a sum per gradient.

Each Cell has a `fused` switch: `fused=True` runs the C++ kernel when the library builds here
and otherwise, after one warning, the reference composition of plain MindSpore ops that
`fused=False` runs; `cell.fused` says which one runs. Tests compare the two, forward and backward.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore.ops import operations as P

from pangu_ms.kernels.attention import mask_bias
from pangu_ms.kernels.build import cpu_training_library, isa_supported, training_isa
from pangu_ms.kernels.norm_act import GELU

__all__ = ["AddLayerNorm", "BiasActivation", "FlashAttention", "FusedAdamW", "GradSquaredNorm",
           "TiedHeadCrossEntropy", "cpu_training_library", "kernel_threads", "training_isa"]

Activation = Literal["gelu", "fast_gelu"]
FAST_GELU_SLOPE = 1.702
"""fast GELU is x * sigmoid(1.702 x) (MindSpore's FastGeLU)."""


def _resolve(fused: bool, isa: str | None) -> tuple[str | None, str | None]:
    """(library path or None, ISA suffix) for a Cell's `fused` and `isa` arguments: the ISA is
    checked (and chosen, for None) only where the kernel will run, so the reference path works on
    any CPU."""
    if isa is not None and isa not in ("avx2", "avx512"):
        raise ValueError(f"isa={isa!r} is not one of avx2, avx512 (or None: this CPU's best)")
    lib = cpu_training_library() if fused else None
    if lib is None:
        return None, isa
    isa = training_isa() if isa is None else isa
    if not isa_supported(isa):
        raise ValueError(f"isa={isa!r}: this CPU cannot run the {isa} kernels (see pangu_ms.kernels.build)")
    return lib, isa


def _op(lib: str, name: str, isa: str, out_shape, out_dtype, bprop=None):
    return ops.Custom(f"{lib}:{name}_{isa}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)


def kernel_threads() -> int:
    """Threads the training kernels use in this process (builds and loads the library); 0 if it
    cannot be built."""
    import ctypes

    lib = cpu_training_library()
    return int(ctypes.CDLL(lib).PanguKernelThreads()) if lib else 0


# ---------------------------------------------------------------- bias + activation

class _FastGelu(nn.Cell):
    """x * sigmoid(1.702 x), composed of plain ops: [..] -> [..]."""

    def __init__(self):
        super().__init__()
        self.sigmoid = P.Sigmoid()

    def construct(self, x):
        return x * self.sigmoid(x * FAST_GELU_SLOPE)


class BiasActivation(nn.Cell):
    """y = act(x + bias): x [T, F] fp32 or fp16, bias [F] -> [T, F] in x's dtype (fp32 inside).

    `kind` "gelu" is the model's tanh GELU written x * sigmoid(2c (x + 0.044715 x^3)), c = sqrt(2/pi)
    (`norm_act.GELU`); "fast_gelu" is x * sigmoid(1.702 x). Backward: dx = dy act'(x + bias) and
    dbias = its column sums, from one kernel that recomputes x + bias (nothing is saved). The
    reference adds the bias and applies the composed activation in fp32.
    """

    def __init__(self, kind: Activation = "gelu", *, fused: bool = True, isa: str | None = None):
        super().__init__()
        if kind not in ("gelu", "fast_gelu"):
            raise ValueError(f"BiasActivation kind={kind!r}: use 'gelu' or 'fast_gelu'")
        lib, self.isa = _resolve(fused, isa)
        self.kind = kind
        self.fused = lib is not None
        self.act = GELU() if kind == "gelu" else _FastGelu()
        self.cast = P.Cast()
        if self.fused:
            name = "BiasGelu" if kind == "gelu" else "BiasFastGelu"
            backward = _op(lib, name + "Bwd", self.isa, lambda x, b, dy: (x, b), lambda x, b, dy: (x, b))

            def bprop(x, bias, out, dout):
                return backward(x, bias, dout)

            self.kernel = _op(lib, name + "Fwd", self.isa, lambda x, b: x, lambda x, b: x, bprop)

    def construct(self, x, bias):
        if self.fused:
            return self.kernel(x, bias)
        z = self.cast(x, ms.float32) + self.cast(bias, ms.float32)
        return self.cast(self.act(z), x.dtype)


# ---------------------------------------------------------------- residual add + LayerNorm

class AddLayerNorm(nn.Cell):
    """(s, y) = (residual + x, LayerNorm(residual + x)) over the last axis.

    `construct(x [T, H] fp32/fp16, residual [T, H] fp32, gamma [H], beta [H]) -> (s [T, H],
    y [T, H])`, both fp32, statistics in fp32 (the variance from a second pass over the row).
    Gradients flow into both outputs: the backward kernel adds ds to the LayerNorm gradient and
    returns it as dx (x's dtype) and dresidual, with dgamma and dbeta. The kernel keeps the row
    mean and 1/std for the backward ([T] each). The reference is an Add and `P.LayerNorm`.
    """

    def __init__(self, eps: float = 1e-5, *, fused: bool = True, isa: str | None = None):
        super().__init__()
        lib, self.isa = _resolve(fused, isa)
        self.fused = lib is not None
        self.eps = float(eps)
        self.cast = P.Cast()
        self.layer_norm = P.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=self.eps)
        if self.fused:
            self.eps_tensor = Tensor(np.array([self.eps], np.float32))
            backward = _op(lib, "AddLayerNormBwd", self.isa,
                           lambda x, g, b, s, m, r, ds, dy: (x, x, g, b),
                           lambda x, g, b, s, m, r, ds, dy: (x, ms.float32, g, b))
            zeros_like = P.ZerosLike()

            def bprop(x, residual, gamma, beta, eps, out, dout):
                s, _, mean, rstd = out
                dx, dres, dgamma, dbeta = backward(x, gamma, beta, s, mean, rstd, dout[0], dout[1])
                return dx, dres, dgamma, dbeta, zeros_like(eps)

            self.kernel = _op(lib, "AddLayerNormFwd", self.isa,
                              lambda x, r, g, b, e: (x, x, x[:-1], x[:-1]),
                              lambda x, r, g, b, e: (ms.float32, ms.float32, ms.float32, ms.float32), bprop)

    def construct(self, x, residual, gamma, beta):
        if self.fused:
            out = self.kernel(x, residual, gamma, beta, self.eps_tensor)
            return out[0], out[1]
        s = residual + self.cast(x, ms.float32)
        return s, self.layer_norm(s, self.cast(gamma, ms.float32), self.cast(beta, ms.float32))[0]


# ---------------------------------------------------------------- attention

class FlashAttention(nn.Cell):
    """ctx = softmax(q k^T / sqrt(D) + mask) v, with the mask from document ids.

    `construct(q, k, v [B, N, S, D] fp32 or fp16 (q not scaled), doc_ids [B, S] int32) -> ctx
    [B, N, S, D]` in q's dtype: query i sees key j iff j <= i and doc_ids[b, i] == doc_ids[b, j]
    (causal, reset at every document boundary; a one-token document sees itself). The softmax is
    fp32. The kernel walks 64 x 64 tiles with an online softmax and skips tiles no query sees,
    so the S x S matrix is never stored; it keeps only each row's log-sum-exp [B, N, S] fp32 (base 2), and
    the backward kernel recomputes the probabilities tile by tile. D is q's last dimension; the
    reference (`fused=False`) scales by 1/sqrt(head_dim), adds `mask_bias` of the same rule and
    runs BatchMatMul / Softmax / BatchMatMul in fp32.
    """

    def __init__(self, head_dim: int, *, fused: bool = True, isa: str | None = None):
        super().__init__()
        lib, self.isa = _resolve(fused, isa)
        self.fused = lib is not None
        self.head_dim = int(head_dim)
        self.scale = 1.0 / float(np.sqrt(self.head_dim))
        self.cast = P.Cast()
        self.qk = P.BatchMatMul(transpose_b=True)
        self.pv = P.BatchMatMul()
        self.softmax = P.Softmax(-1)
        if self.fused:
            backward = _op(lib, "FlashAttentionBwd", self.isa,
                           lambda q, k, v, d, o, lse, do: (q, q, q), lambda q, k, v, d, o, lse, do: (q, q, q))
            zeros_like = P.ZerosLike()

            def bprop(q, k, v, doc_ids, out, dout):
                dq, dk, dv = backward(q, k, v, doc_ids, out[0], out[1], dout[0])
                return dq, dk, dv, zeros_like(doc_ids)

            self.kernel = _op(lib, "FlashAttentionFwd", self.isa, lambda q, k, v, d: (q, q[:3]),
                              lambda q, k, v, d: (q, ms.float32), bprop)

    def construct(self, q, k, v, doc_ids):
        if self.fused:
            return self.kernel(q, k, v, doc_ids)[0]
        seq = q.shape[2]
        pos = ops.arange(seq, dtype=ms.int32)
        causal = pos.reshape(1, -1) <= pos.reshape(-1, 1)  # [S, S]: key j <= query i
        same_doc = doc_ids.reshape(-1, 1, seq, 1) == doc_ids.reshape(-1, 1, 1, seq)  # [B, 1, S, S]
        bias = mask_bias(ops.logical_and(causal.reshape(1, 1, seq, seq), same_doc))
        scores = self.qk(self.cast(q, ms.float32) * self.scale, self.cast(k, ms.float32))  # [B, N, S, S]
        probs = self.softmax(scores + bias)
        return self.cast(self.pv(probs, self.cast(v, ms.float32)), q.dtype)  # [B, N, S, D]


# ---------------------------------------------------------------- tied head + cross-entropy

class TiedHeadCrossEntropy(nn.Cell):
    """Mean next-token NLL of logits h table^T over the labels that are not `pad_id`.

    `construct(h [T, H], table [V, H] (fp32 or fp16), labels [T] int32) -> loss [] fp32`; 0 when
    every label is padding; a label outside [0, V) that is not `pad_id` stops the kernel with
    error code 4. The kernel walks 288-token chunks: logits [288, V] in fp32, the row's log-sum-exp,
    then d logits = (softmax - onehot) / count in place, consumed at once by d h = dl table and
    d table += dl^T h. No [T, V] tensor is kept: by default (`grad_in_forward=True`) the forward
    returns d h [T, H] and d table [V, H] (fp32) with the loss, and the backward scales them by
    d loss (three products in all, none repeated); with `grad_in_forward=False` the forward
    computes the loss alone and the backward kernel recomputes the logits (four products; use it
    where the loss is often computed without a backward, as in evaluation). The reference is
    MatMul(transpose_b) in fp32, LogSoftmax and a gather of the labels' log-probabilities.
    """

    def __init__(self, pad_id: int, *, grad_in_forward: bool = True, fused: bool = True, isa: str | None = None):
        super().__init__()
        lib, self.isa = _resolve(fused, isa)
        self.fused = lib is not None
        self.pad_id = int(pad_id)
        self.grad_in_forward = grad_in_forward
        self.cast = P.Cast()
        self.logits = P.MatMul(transpose_b=True)
        self.log_softmax = P.LogSoftmax(-1)
        self.gather = P.GatherD()
        if not self.fused:
            return
        self.pad = Tensor(np.array([self.pad_id], np.int32))
        zeros_like = P.ZerosLike()
        if grad_in_forward:
            def bprop(h, table, labels, pad, out, dout):
                scale = dout[0]  # d loss [1]
                return (self.cast(out[1] * scale, h.dtype), self.cast(out[2] * scale, table.dtype),
                        zeros_like(labels), zeros_like(pad))

            # the loss is [1]: an aot output of shape [] would be a scalar, not a 0-d tensor
            self.kernel = _op(lib, "TiedHeadCEFwd", self.isa, lambda h, t, y, p: ([1], h, t),
                              lambda h, t, y, p: (ms.float32, ms.float32, ms.float32), bprop)
        else:
            backward = _op(lib, "TiedHeadCEBwd", self.isa, lambda h, t, y, p, g: (h, t), lambda h, t, y, p, g: (h, t))

            def bprop(h, table, labels, pad, out, dout):
                dh, dtable = backward(h, table, labels, pad, dout)  # dout: d loss [1]
                return dh, dtable, zeros_like(labels), zeros_like(pad)

            self.kernel = _op(lib, "TiedHeadCELoss", self.isa, lambda h, t, y, p: [1],
                              lambda h, t, y, p: ms.float32, bprop)

    def construct(self, h, table, labels):
        if self.fused:
            out = self.kernel(h, table, labels, self.pad)
            return (out[0] if self.grad_in_forward else out).reshape(())
        logp = self.log_softmax(self.logits(self.cast(h, ms.float32), self.cast(table, ms.float32)))  # [T, V]
        keep = labels != self.pad_id  # [T]
        safe = ops.select(keep, labels, ops.zeros_like(labels))  # the pad id may lie outside [0, V)
        nll = -self.gather(logp, 1, safe.reshape(-1, 1)).reshape(-1)  # [T]
        w = self.cast(keep, ms.float32)
        return (nll * w).sum() / w.sum().clip(1.0, None)


# ---------------------------------------------------------------- AdamW

_adamw = ops.MultitypeFuncGraph("pangu_adamw")
_copy_fp16 = ops.MultitypeFuncGraph("pangu_copy_fp16")


@_adamw.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                 "Tensor", "Tensor")
def _adamw_update(b1, b2, eps, lr, c1, c2, factor, decay, param, m, v, grad):
    """The reference update of one parameter (the kernel's formula, with MindSpore ops)."""
    g = ops.cast(grad, ms.float32) * factor
    m_new = b1 * m + (1.0 - b1) * g
    v_new = b2 * v + (1.0 - b2) * (g * g)
    p_new = param - lr * (m_new * c1 / (ops.sqrt(v_new * c2) + eps) + decay * param)
    return ops.depend(ops.assign(param, p_new), (ops.assign(m, m_new), ops.assign(v, v_new)))


@_copy_fp16.register("Tensor", "Tensor")
def _copy_fp16_update(copy, param):
    return ops.assign(copy, ops.cast(param, ms.float16))


class FusedAdamW(nn.Cell):
    """AdamW on fp32 master weights in one launch: see the module docstring for the interface.

    `construct(grads, factor [] fp32, overflow [] bool, lr [] fp32, step [] int32) -> applied []
    bool`. The reference (`fused=False`) is the same update with MindSpore ops per parameter.
    """

    def __init__(self, params: Sequence[Parameter], *, beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8,
                 weight_decay: float = 0.0, decay: Callable[[str], bool] | Sequence[bool] | None = None,
                 bias_correction: bool = False, fp16_copies: Sequence[Parameter] | None = None, fused: bool = True,
                 isa: str | None = None):
        super().__init__(auto_prefix=False)
        lib, self.isa = _resolve(fused, isa)
        self.fused = lib is not None
        self.parameters = ParameterTuple(params)
        names = [p.name for p in self.parameters]
        if any(p.dtype != ms.float32 for p in self.parameters):
            raise ValueError(f"FusedAdamW updates fp32 master weights; not fp32: "
                             f"{[p.name for p in self.parameters if p.dtype != ms.float32]}")
        if decay is None:
            flags = [True] * len(names)
        elif callable(decay):
            flags = [bool(decay(n)) for n in names]
        else:
            flags = [bool(f) for f in decay]
            if len(flags) != len(names):
                raise ValueError(f"FusedAdamW decay: {len(flags)} flags for {len(names)} parameters")
        self.decay_rates = [float(weight_decay) if f else 0.0 for f in flags]
        self.moments1 = self.parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self.parameters.clone(prefix="adam_v", init="zeros")
        self.has_copies = fp16_copies is not None
        self.copies = ParameterTuple(fp16_copies if self.has_copies else [])
        if self.has_copies and ([c.shape for c in self.copies] != [p.shape for p in self.parameters]
                                or any(c.dtype != ms.float16 for c in self.copies)):
            raise ValueError("FusedAdamW fp16_copies: one fp16 Parameter per parameter, of the same shape")
        self.bias_correction = bool(bias_correction)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.hyper_map = ops.HyperMap()
        self.decays = tuple(Tensor(d, ms.float32) for d in self.decay_rates)
        if self.fused:
            self.hyper = Tensor(np.array([len(names), float(self.has_copies), beta1, beta2, eps,
                                          float(self.bias_correction), *self.decay_rates], np.float32))
            self.kernel = _op(lib, "FusedAdamW", self.isa, [1], ms.int32)
            self.kernel.add_prim_attr("side_effect_mem", True)

    def construct(self, grads, factor, overflow, lr, step):
        if self.fused:
            applied = self.kernel(self.hyper, factor, overflow, lr, step, *self.parameters, *self.moments1,
                                  *self.moments2, *grads, *self.copies)
            return applied.reshape(()) > 0
        if overflow:
            return ops.logical_not(overflow)
        c1, c2 = ops.ones((), ms.float32), ops.ones((), ms.float32)
        if self.bias_correction:
            t = ops.cast(step, ms.float32)
            c1 = 1.0 / (1.0 - ops.pow(Tensor(self.beta1, ms.float32), t))
            c2 = 1.0 / (1.0 - ops.pow(Tensor(self.beta2, ms.float32), t))
        update = ops.partial(_adamw, Tensor(self.beta1, ms.float32), Tensor(self.beta2, ms.float32),
                             Tensor(self.eps, ms.float32), lr, c1, c2, factor)
        done = self.hyper_map(update, self.decays, self.parameters, self.moments1, self.moments2, grads)
        if self.has_copies:  # after the updates: side effects on Parameters run in program order
            done = ops.depend(self.hyper_map(_copy_fp16, self.copies, self.parameters), done)
        return ops.depend(ops.logical_not(overflow), done)


_square_sum = ops.MultitypeFuncGraph("pangu_square_sum")


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    g = ops.cast(grad, ms.float32)
    return (g * g).sum()


class GradSquaredNorm(nn.Cell):
    """sum over every gradient of sum(g^2): `construct(grads tuple (fp32 or fp16)) -> [] fp32`.

    One launch (per-piece double sums added in a fixed order); inf or NaN in any gradient gives
    inf or NaN. The reference is a cast, multiply and sum per gradient and an AddN.
    """

    def __init__(self, *, fused: bool = True, isa: str | None = None):
        super().__init__()
        lib, self.isa = _resolve(fused, isa)
        self.fused = lib is not None
        self.hyper_map = ops.HyperMap()
        if self.fused:
            self.kernel = _op(lib, "GradSquaredNorm", self.isa, [1], ms.float32)

    def construct(self, grads):
        if self.fused:
            return self.kernel(*grads).reshape(())
        return ops.addn(self.hyper_map(_square_sum, grads))
