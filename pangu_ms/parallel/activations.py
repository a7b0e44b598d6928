"""Activation memory of PanGu-alpha's layers: what one micro-batch leaves for the backward pass.

Notation: b micro-batch rows, s sequence, T = b*s tokens, H hidden, F ffn width, a heads,
t = mp (op-level model parallel), A = a*s*s*b (one attention score tensor, all heads),
Ta = T*a (one value per token and head).

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models")
count 34*s*b*h + 5*a*s^2*b bytes per GPT layer with 16-bit activations and 1-byte dropout
masks. `layer_terms()` redoes that count for the layers as this project builds them
(pangu_ms/models with the roles of pangu_ms/kernels), from what each op's MindSpore bprop reads:
`P.LayerNorm` keeps its fp32 input (and [T] mean and variance), GeLU its input and output,
FastGeLU its input, Softmax its output, a matmul both inputs (in the compute dtype), dropout
its mask, which on Ascend is one bit per element (DropoutGenMask / DropoutDoMask); adds,
casts, reshapes and transposes keep nothing. The residual stream is fp32. Each `Term` is one
tensor kept from the forward to the backward pass; docs/parallel_and_launch.md walks through
the list. Which kernels build the layer (`kernel_backend`) changes the attention terms:

- `reference` (910A, and every device with `model.kernels: reference`): BatchMatMul, fp32
  Softmax, BatchMatMul. fp16 with dropout 0.1 (the paper's runs), a block keeps
      12.25 TH + 8 TH/t + 10 TF/t + 6.125 A/t  bytes      (Korthikanti, t = 1: 34 TH + 5 A);
- `ascend_910b` (910B with `kernels: fused`): FlashAttentionScore keeps q, k, v, its output
  and two fp32 [B, N, S, 8] softmax statistics (no S x S tensor but the dropout bits), and
  CANN's AddLayerNorm keeps both addends where Add + LayerNorm kept the sum. bf16 with dropout:
      12.25 TH + 10 TH/t + 10 TF/t + 64 Ta/t + 0.125 A/t  bytes.
The top query layer keeps 2 TH more (its query input is the top-query embedding, a second
matmul input next to LN1's output).

Recompute (`recompute.mode`): `none` keeps every term; `selective` recomputes the attention
core, dropping its terms (`core`); `full` keeps only each layer's input (the fp32 residual,
4 TH) and rebuilds one layer at a time in the backward pass (`working_set`).

The CPU device is not counted here: MindSpore's CPU backend keeps far more than the backward
needs, so its memory comes from constants measured on the path it runs (`hardware.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config import ModelConfig

Kind = Literal["TH", "TH/t", "TF/t", "Ta/t", "A/t"]
Backend = Literal["reference", "ascend_910b", "cpu_fused"]
MASK_BIT = 1 / 8
"""bytes per element of an Ascend dropout mask (DropoutGenMask packs one bit per element)."""


@dataclass(frozen=True)
class Term:
    """One saved tensor: `bytes_per_element` x the size named by `kind`."""

    what: str
    kind: Kind
    bytes_per_element: float
    core: bool = False
    """part of the attention core (recomputed under `selective`)."""


def kernel_backend(model: ModelConfig, device: str) -> Backend:
    """The kernel spec `device` ('910A', '910B', '910B-32GB', 'CPU') builds `model` with, as
    `pangu_ms.kernels.switch.kernel_spec` picks it: for `kernels: fused` the 910B kernels on a
    910B and the C++ spec on CPU (wholly so only in fp32 without dropout: else its attention or
    loss is the reference); the reference ops otherwise (910A has no FlashAttentionScore or
    AddLayerNorm). `layer_terms` counts the Ascend ones; the CPU is measured (`hardware.py`)."""
    if model.kernels != "fused":
        return "reference"
    if device.upper().startswith("910B"):
        return "ascend_910b"
    if device.upper() == "CPU" and model.dropout == 0 and model.compute_dtype == "float32":
        return "cpu_fused"
    return "reference"


def _flash(model: ModelConfig, backend: Backend) -> bool:
    """FlashAttentionScore takes fp16/bf16 only: an fp32 model keeps the reference core on 910B."""
    return backend == "ascend_910b" and model.compute_dtype != "float32"


def _attention_core(model: ModelConfig, backend: Backend, c: int) -> list[Term]:
    drop, cast = model.dropout > 0, model.compute_dtype != "float32"
    if _flash(model, backend):  # FlashAttentionScoreGrad reads q, k, v, the output, max/sum, the drop bits
        t = [Term("q, k: FlashAttentionScore inputs", "TH/t", 2 * c), Term("v: FlashAttentionScore input", "TH/t", c),
             Term("FlashAttentionScore output (compute dtype)", "TH/t", c, core=True),
             Term("softmax max and sum [B, N, S, 8] fp32", "Ta/t", 64, core=True)]
        if drop:
            t.append(Term("attention-probability dropout bits", "A/t", MASK_BIT, core=True))
        return t
    t = [Term("q (scaled), k: inputs of q k^T", "TH/t", 2 * c), Term("v: input of p v", "TH/t", c),
         Term("softmax output (fp32; its backward reads only the output)", "A/t", 4, core=True)]
    if drop:
        t.append(Term("attention-probability dropout bits", "A/t", MASK_BIT, core=True))
    if drop or cast:  # else p v reads the softmax output itself
        label = "/".join(name for name, on in (("dropped", drop), ("cast", cast)) if on)
        t.append(Term(f"p: {label} probabilities, input of p v", "A/t", c, core=True))
    return t


def layer_terms(model: ModelConfig, *, query_layer: bool = False, backend: Backend = "reference") -> list[Term]:
    """The tensors one layer keeps for its backward pass (see the module docstring)."""
    c = 4 if model.compute_dtype == "float32" else 2  # a matmul input in the compute dtype
    cast = ", cast" if model.compute_dtype != "float32" else ""
    drop = model.dropout > 0
    t: list[Term] = [Term("LN1 input: the layer input (fp32)", "TH", 4),
                     Term(f"Q/K/V matmul input (LN1 output{cast})", "TH", c)]
    if query_layer:
        t.append(Term(f"Q matmul input (top query embedding{cast})", "TH", c))
    t += _attention_core(model, backend, c)
    t.append(Term(f"output-projection input{cast}", "TH/t", c))
    if drop:
        t.append(Term("attention-output dropout bits", "TH", MASK_BIT))
    if backend == "ascend_910b":  # AddLayerNormV2's grad reads both addends; the residual one is the layer input
        t.append(Term("LN2 input: the attention branch (AddLayerNorm's second addend, fp32)", "TH", 4))
    else:
        t.append(Term("LN2 input: residual + attention (fp32)", "TH", 4))
    t.append(Term(f"fc1 input (LN2 output{cast})", "TH", c))
    gelu = model.activation == "gelu"
    t.append(Term("activation input (bias added, fp32)", "TF/t", 4))
    if gelu:  # GeLUGrad reads x and y; FastGeLUGrad x only
        t.append(Term("GeLU output (fp32)" + ("" if cast else ", also the fc2 input"), "TF/t", 4))
    if cast or not gelu:
        t.append(Term(f"fc2 input (activation output{cast})", "TF/t", c))
    if drop:
        t.append(Term("FFN-output dropout bits", "TH", MASK_BIT))
    return t


def sizes(model: ModelConfig, b: int, mp: int) -> dict[str, float]:
    """Elements of each kind for a micro-batch of `b` rows on `mp`-way model parallel."""
    s, h, f, a = model.seq_length, model.hidden_size, model.ffn_hidden_size, model.num_heads
    tokens = b * s
    return {"TH": tokens * h, "TH/t": tokens * h / mp, "TF/t": tokens * f / mp, "Ta/t": tokens * a / mp,
            "A/t": a * s * s * b / mp}


def layer_bytes(model: ModelConfig, b: int, mp: int, mode: str, *, query_layer: bool = False,
                backend: Backend = "reference") -> float:
    """Bytes one layer keeps for the backward pass, per micro-batch, under recompute `mode`."""
    if mode == "full":
        return 4.0 * b * model.seq_length * model.hidden_size  # the fp32 layer input only
    n = sizes(model, b, mp)
    return sum(x.bytes_per_element * n[x.kind] for x in layer_terms(model, query_layer=query_layer, backend=backend)
               if not (mode == "selective" and x.core))


def working_set(model: ModelConfig, b: int, mp: int, mode: str, *, backend: Backend = "reference") -> float:
    """Bytes rebuilt for the one layer whose backward runs (full: a whole layer; selective: its core)."""
    if mode == "full":
        return layer_bytes(model, b, mp, "none", query_layer=True, backend=backend)
    if mode == "selective":
        n = sizes(model, b, mp)
        return sum(x.bytes_per_element * n[x.kind] for x in layer_terms(model, backend=backend) if x.core)
    return 0.0


def coefficients(model: ModelConfig, *, query_layer: bool = False, backend: Backend = "reference") -> dict[str, float]:
    """The per-layer totals as {kind: bytes per element} (no recompute), for the docs and tests."""
    out: dict[str, float] = {}
    for x in layer_terms(model, query_layer=query_layer, backend=backend):
        out[x.kind] = out.get(x.kind, 0.0) + x.bytes_per_element
    return out


def mask_bytes(model: ModelConfig, b: int, mode: str, *, backend: Backend = "reference") -> float:
    """The attention mask built once per micro-batch from the document ids and shared by every layer,
    while a backward still reads it: FlashAttentionScoreGrad takes the uint8 [b, 1, s, s] mask
    (always kept); the reference core's Add keeps nothing, so its fp32 [b, 1, s, s] bias lives
    into the backward only when recompute replays the core (selective, full)."""
    elements = b * model.seq_length ** 2
    if _flash(model, backend):
        return 1.0 * elements
    return 4.0 * elements if mode in ("selective", "full") else 0.0


def extras_bytes(model: ModelConfig, b: int, mp: int, *, first: bool, last: bool, vocab_parallel: bool,
                 mode: str = "full", backend: Backend = "reference") -> float:
    """Per micro-batch tensors outside the layers: the shared attention mask on every stage
    (`mask_bytes`), the embedding-dropout bits on the first, the final LayerNorm's fp32 input on the last."""
    s, h = model.seq_length, model.hidden_size
    out = mask_bytes(model, b, mode, backend=backend)
    if first and model.dropout > 0:
        out += MASK_BIT * b * s * h
    if last:
        out += 4.0 * b * s * h
    return out


def head_bytes(model: ModelConfig, b: int, mp: int, *, vocab_parallel: bool) -> float:
    """Peak of the tied head and the loss for one micro-batch on the last stage (both backends).

    Vocab-parallel loss (`VocabParallelCrossEntropy`, autodiff): exp's output, the
    log-probabilities and the one-hot pick [T, V/t] fp32 are kept (12 bytes; Exp's backward
    reads its output, the pick's Mul both inputs) and the backward adds two [T, V/t] fp32
    gradients (8). The replicated `TiedHeadCrossEntropy` keeps the fp32 log-probabilities
    (LogSoftmax's backward reads its output) and its backward makes two [T, V] fp32 tensors (the
    gathered gradient scattered back, LogSoftmaxGrad's result): 12 bytes.
    """
    tokens_vocab = b * model.seq_length * model.vocab_size
    return 20.0 * tokens_vocab / mp if vocab_parallel else 12.0 * tokens_vocab


def in_flight(scheduler: str, pp: int, stage: int, micro_batches: int, chunks: int = 1) -> float:
    """Micro-batches whose activations a stage holds at its peak, in units of its whole layer set.

    1f1b: stage i holds min(pp - i, m) (the warm-up forwards plus the one in flight); gpipe: all
    m; interleaved_1f1b (v chunks, Megatron's schedule): min(m*v, 2(pp - i - 1) + (v - 1)pp + 1)
    chunk-micro-batches of 1/v of the stage's layers each. MindSpore's interleaved scheduler moves
    some forwards later to hold fewer, so that figure is an upper bound.
    """
    if pp == 1:
        return 1.0
    if scheduler == "gpipe":
        return float(micro_batches)
    if scheduler == "interleaved_1f1b":
        return min(micro_batches * chunks, 2 * (pp - stage - 1) + (chunks - 1) * pp + 1) / chunks
    return float(min(pp - stage, micro_batches))


def bubble_fraction(scheduler: str, pp: int, micro_batches: int, chunks: int = 1) -> float:
    """Idle time of the pipeline relative to its busy time: (pp - 1) / (m v)."""
    if pp == 1:
        return 0.0
    return (pp - 1) / (micro_batches * (chunks if scheduler == "interleaved_1f1b" else 1))
