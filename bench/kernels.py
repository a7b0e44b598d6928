#!/usr/bin/env python
"""Each CPU training kernel (pangu_ms/kernels/cpu_training.py) against its reference composition
of plain MindSpore ops, forward plus backward, as JSON lines.

For every shape and kernel, one graph computes the output and the gradients of every input
(the optimizer: one update step instead), built once with the C++ kernel (`fused`) and once with
the Cell's reference composition (`fused=False`, the path the Cell falls back to); after a
compile and warm-up call each, the two alternate for --rounds rounds of --reps calls, and the
medians over all calls are reported:

    {"kernel": ..., "shape": ..., "dtype": ..., "isa": ..., "threads": ..., "fused_ms": ...,
     "reference_ms": ..., "ratio": reference / fused, "fused_cpu_ms": ..., "reference_cpu_ms": ...,
     "reference": "what the reference runs", "load": [1-min load average before, after]}

`*_cpu_ms` is the process's CPU time per call (all threads): on a shared machine it moves less
than wall time. Shapes: `tiny` (B 8, S 256, H 256, N 8, F 1024, V 8000) and `small` (H 512,
F 2048). Kernels: attention (one document per row: no tile can be skipped), attention_docs
(documents of about 64 tokens), add_layer_norm, bias_gelu, bias_fast_gelu, head_ce, head_ce_sparse
(the same fused kernel against MatMul + SparseSoftmaxCrossEntropyWithLogits, a faster reference
than the log-softmax one), adamw (the tiny/small model's parameter set: the unscale pass and
nn.AdamWeightDecay against one FusedAdamW launch).

    python bench/kernels.py                           # both shapes, every kernel, 5 rounds
    python bench/kernels.py --shapes tiny --kernels head_ce,adamw --rounds 3
    PANGU_MS_CPU_ISA=avx2 python bench/kernels.py     # the AVX2 code path
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

SHAPES = {
    "tiny": dict(batch=8, seq=256, hidden=256, heads=8, ffn=1024, vocab=8000, layers=4),
    "small": dict(batch=8, seq=256, hidden=512, heads=8, ffn=2048, vocab=8000, layers=7),
}
KERNELS = ["attention", "attention_docs", "add_layer_norm", "bias_gelu", "bias_fast_gelu", "head_ce",
           "head_ce_sparse", "adamw"]


def _fwd_bwd(cell):
    """A Cell: (*inputs, sens) -> (cell(*inputs), d/d inputs of sum(cell(*inputs) * sens))."""
    import mindspore as ms
    from mindspore import nn

    class FwdBwd(nn.Cell):
        def __init__(self):
            super().__init__()
            self.cell = cell
            self.grad = ms.ops.GradOperation(get_all=True, sens_param=True)

        def construct(self, *args):
            return self.cell(*args[:-1]), self.grad(self.cell)(*args)

    return FwdBwd()


class _SparseHead:
    """MatMul(transpose_b) + SparseSoftmaxCrossEntropyWithLogits (mean over all tokens)."""

    @staticmethod
    def cell():
        from mindspore import nn
        from mindspore.ops import operations as P

        class SparseHead(nn.Cell):
            def __init__(self):
                super().__init__()
                self.logits = P.MatMul(transpose_b=True)
                self.loss = P.SparseSoftmaxCrossEntropyWithLogits()

            def construct(self, h, table, labels):
                return self.loss(self.logits(h, table), labels)

        return SparseHead()


def _model_param_shapes(s: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The PanGu-alpha parameters of shape `s` (names ending like the model's, for the decay rule)."""
    h, f = s["hidden"], s["ffn"]
    out = [("word_embedding.embedding_table", (s["vocab"], h)), ("position_embedding.embedding_table", (s["seq"], h)),
           ("top_query_embedding.embedding_table", (s["seq"], h)), ("layernorm.gamma", (h,)), ("layernorm.beta", (h,))]
    for i in range(s["layers"]):
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            out += [(f"blocks.{i}.attention.{name}.weight", (h, h)), (f"blocks.{i}.attention.{name}.bias", (h,))]
        out += [(f"blocks.{i}.ffn.linear_fc1.weight", (h, f)), (f"blocks.{i}.ffn.linear_fc1.bias", (f,)),
                (f"blocks.{i}.ffn.linear_fc2.weight", (f, h)), (f"blocks.{i}.ffn.linear_fc2.bias", (h,))]
        out += [(f"blocks.{i}.layernorm{j}.{p}", (h,)) for j in (1, 2) for p in ("gamma", "beta")]
    return out


def _adamw_pair(s: dict, isa: str | None):
    """(fused step, reference step, inputs): the optimizer update of the whole model."""
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops

    from pangu_ms.kernels.cpu_training import FusedAdamW

    rng = np.random.default_rng(0)
    shapes = _model_param_shapes(s)
    decays = lambda name: not name.endswith((".bias", ".gamma", ".beta"))  # noqa: E731

    def params(tag):
        return [Parameter(Tensor(rng.normal(size=sh).astype(np.float32) * 0.02), name=f"{tag}.{n}") for n, sh in shapes]

    class Fused(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.opt = FusedAdamW(params("f"), beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay=decays, isa=isa)

        def construct(self, grads, factor, overflow, lr, step):
            return self.opt(grads, factor, overflow, lr, step)

    class Reference(nn.Cell):
        """What the training step does without the kernel: unscale every gradient, then AdamW."""

        def __init__(self):
            super().__init__(auto_prefix=False)
            ps = params("r")
            groups = [{"params": [p for p in ps if decays(p.name)], "weight_decay": 0.1},
                      {"params": [p for p in ps if not decays(p.name)], "weight_decay": 0.0}, {"order_params": ps}]
            self.opt = nn.AdamWeightDecay(groups, learning_rate=1e-4, beta1=0.9, beta2=0.95, eps=1e-8)
            self.hyper_map = ops.HyperMap()

        def construct(self, grads, factor, overflow, lr, step):
            grads = self.hyper_map(ops.partial(ops.mul, factor), grads)
            done = overflow
            if not overflow:
                done = ops.depend(overflow, self.opt(grads))
            return done

    grads = tuple(Tensor(rng.normal(size=sh).astype(np.float32)) for _, sh in shapes)
    inputs = (grads, Tensor(np.float32(1e-3)), Tensor(False), Tensor(np.float32(1e-4)), Tensor(np.int32(1)))
    return Fused(), Reference(), inputs, "hyper_map unscale + nn.AdamWeightDecay"


def build(kernel: str, s: dict, dtype, isa: str | None):
    """(fused callable, reference callable, inputs, description of the reference)."""
    from mindspore import Tensor

    from pangu_ms.kernels.cpu_training import AddLayerNorm, BiasActivation, FlashAttention, TiedHeadCrossEntropy

    rng = np.random.default_rng(0)
    b, sq, h, n, f, v = s["batch"], s["seq"], s["hidden"], s["heads"], s["ffn"], s["vocab"]
    t = b * sq
    arr = lambda *shape, scale=1.0: Tensor((rng.normal(size=shape) * scale).astype(dtype))  # noqa: E731
    f32 = lambda *shape: Tensor(rng.normal(size=shape).astype(np.float32))  # noqa: E731
    if kernel.startswith("attention"):
        d = h // n
        docs = np.zeros((b, sq), np.int32)
        if kernel == "attention_docs":
            docs = np.cumsum(rng.random((b, sq)) < 1 / 64, axis=1).astype(np.int32)
        make = lambda fused: _fwd_bwd(FlashAttention(d, fused=fused, isa=isa))  # noqa: E731
        inputs = (arr(b, n, sq, d), arr(b, n, sq, d), arr(b, n, sq, d), Tensor(docs), arr(b, n, sq, d))
        return make(True), make(False), inputs, "BatchMatMul + mask bias + Softmax + BatchMatMul, autodiff"
    if kernel == "add_layer_norm":
        make = lambda fused: _fwd_bwd(AddLayerNorm(1e-5, fused=fused, isa=isa))  # noqa: E731
        inputs = (arr(t, h), f32(t, h), f32(h), f32(h), (f32(t, h), f32(t, h)))
        return make(True), make(False), inputs, "Add + P.LayerNorm, autodiff"
    if kernel.startswith("bias_"):
        kind = kernel[len("bias_"):]
        make = lambda fused: _fwd_bwd(BiasActivation(kind, fused=fused, isa=isa))  # noqa: E731
        act = "composed x * sigmoid(...) (the model's GELU cell)" if kind == "gelu" else "x * sigmoid(1.702 x)"
        return make(True), make(False), (arr(t, f), f32(f), arr(t, f)), f"x + b, {act}, autodiff"
    if kernel.startswith("head_ce"):
        labels = Tensor(rng.integers(0, v, size=t).astype(np.int32))
        fused = _fwd_bwd(TiedHeadCrossEntropy(6, fused=True, isa=isa))
        inputs = (arr(t, h), arr(v, h, scale=0.02), labels, Tensor(np.float32(1.0)))
        if kernel == "head_ce_sparse":
            ref, described = _SparseHead.cell(), "MatMul(transpose_b) + SparseSoftmaxCrossEntropyWithLogits"
        else:
            ref, described = TiedHeadCrossEntropy(6, fused=False), "MatMul(transpose_b) + LogSoftmax + GatherD"
        return fused, _fwd_bwd(ref), inputs, described
    if kernel == "adamw":
        return _adamw_pair(s, isa)
    raise ValueError(f"unknown kernel {kernel!r}: one of {KERNELS}")


def _sync(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    out.asnumpy()


def _time(fn, inputs, reps: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        _sync(fn(*inputs))
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def run(kernel: str, shape: str, args) -> dict:
    from pangu_ms.kernels.cpu_training import kernel_threads, training_isa

    dtype = np.float16 if args.dtype == "float16" else np.float32
    fused, ref, inputs, described = build(kernel, SHAPES[shape], dtype, args.isa)
    load0 = os.getloadavg()[0]
    for fn in (fused, ref):  # compile, then one untimed call
        _sync(fn(*inputs))
        _sync(fn(*inputs))
    times = {"fused": ([], []), "reference": ([], [])}
    for r in range(args.rounds):
        order = ("fused", "reference") if r % 2 == 0 else ("reference", "fused")
        for name in order:
            wall, cpu = _time(fused if name == "fused" else ref, inputs, args.reps)
            times[name][0].extend(wall)
            times[name][1].extend(cpu)
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}
    return {"kernel": kernel, "shape": shape, "dims": SHAPES[shape], "dtype": args.dtype,
            "isa": args.isa or training_isa(), "threads": kernel_threads(),
            "fused_ms": round(med["fused"][0], 3), "reference_ms": round(med["reference"][0], 3),
            "ratio": round(med["reference"][0] / med["fused"][0], 3),
            "fused_cpu_ms": round(med["fused"][1], 3), "reference_cpu_ms": round(med["reference"][1], 3),
            "calls": len(times["fused"][0]), "reference": described,
            "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny,small", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--kernels", default=",".join(KERNELS), help="comma list of: " + ", ".join(KERNELS))
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per system and round (default 3)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="input dtype (not adamw)")
    p.add_argument("--isa", choices=["avx2", "avx512"], default=None, help="code path (default: the CPU's best)")
    args = p.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from pangu_ms.kernels.cpu_training import cpu_training_library

    if cpu_training_library() is None:
        print("the C++ training kernels cannot be built here (see the warning above)", file=sys.stderr)
        return 1
    for shape in args.shapes.split(","):
        for kernel in args.kernels.split(","):
            print(json.dumps(run(kernel.strip(), shape.strip(), args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
