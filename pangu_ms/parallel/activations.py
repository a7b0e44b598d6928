"""Activation memory of PanGu-alpha's layers: what one micro-batch leaves for the backward pass.

Notation: b micro-batch rows, s sequence, T = b*s tokens, H hidden, F ffn width, a heads,
t = mp (op-level model parallel), A = a*s*s*b (one attention score tensor, all heads).

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models")
count 34*s*b*h + 5*a*s^2*b bytes per GPT layer with 16-bit activations and 1-byte dropout
masks. `layer_terms()` redoes that count for the layers as this project writes them
(pangu_ms/models): LayerNorm and GELU are compositions of fp32 ops, scores/softmax are fp32,
the residual stream is fp32, and matmul inputs are cast copies in the compute dtype. Each
`Term` is one tensor kept from the forward to the backward pass; docs/parallel_and_launch.md
walks through the list and the totals. For float16 with dropout a block keeps
    22 TH + 8 TH/t + 14 TF/t + 7 A/t  bytes      (Korthikanti, t = 1: 34 TH + 5 A),
and the top query layer 2 TH more (its query input is the top-query embedding, a second
matmul input next to LN1's output).

Recompute (`recompute.mode`): `none` keeps every term; `selective` recomputes the attention
core, dropping the A terms; `full` keeps only each layer's input (the fp32 residual, 4 TH)
and rebuilds one layer at a time in the backward pass (`working_set`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pangu_ms.config import ModelConfig

Kind = Literal["TH", "TH/t", "TF/t", "A/t"]


@dataclass(frozen=True)
class Term:
    """One saved tensor: `bytes_per_element` x the size named by `kind`."""

    what: str
    kind: Kind
    bytes_per_element: float
    core: bool = False
    """part of the attention core (recomputed under `selective`)."""


def layer_terms(model: ModelConfig, *, query_layer: bool = False) -> list[Term]:
    """The tensors one layer keeps for its backward pass (see the module docstring)."""
    c = 2 if model.compute_dtype == "float16" else 4  # a matmul input in the compute dtype
    cast = model.compute_dtype != "float32"
    drop = model.dropout > 0
    fast_core = not drop and not cast  # FastCoreAttention: hand-written backward, keeps its output
    t: list[Term] = [
        Term("LN1: x - mean, normalised x (fp32)", "TH", 8),
        Term("Q/K/V matmul input (LN1 output" + (", cast" if cast else "") + ")", "TH", c),
    ]
    if query_layer:
        t.append(Term("Q matmul input (top query embedding" + (", cast" if cast else "") + ")", "TH", c))
    t += [Term("q, k: inputs of q k^T", "TH/t", 2 * c), Term("v: input of p v", "TH/t", c),
          Term("softmax output (fp32)", "A/t", 4, core=True)]
    if drop:
        t += [Term("attention-probability dropout mask", "A/t", 1, core=True)]
    if drop or cast:
        t += [Term("p: dropped" + ("/cast" if cast else "") + " probabilities, input of p v", "A/t", c, core=True)]
    if fast_core:
        t += [Term("attention context (kept by the hand-written core backward)", "TH/t", 4, core=True)]
    t += [Term("output-projection input", "TH/t", c)]
    if drop:
        t += [Term("attention-output dropout mask", "TH", 1)]
    t += [Term("LN2: x - mean, normalised x (fp32)", "TH", 8),
          Term("fc1 input (LN2 output" + (", cast" if cast else "") + ")", "TH", c),
          Term("GELU: x, c1 + c3 x^2, sigmoid (fp32)", "TF/t", 12),
          Term("fc2 input (GELU output" + (", cast" if cast else "") + ")", "TF/t", c)]
    if drop:
        t += [Term("FFN-output dropout mask", "TH", 1)]
    return t


def sizes(model: ModelConfig, b: int, mp: int) -> dict[str, float]:
    """Elements of each kind for a micro-batch of `b` rows on `mp`-way model parallel."""
    s, h, f, a = model.seq_length, model.hidden_size, model.ffn_hidden_size, model.num_heads
    tokens = b * s
    return {"TH": tokens * h, "TH/t": tokens * h / mp, "TF/t": tokens * f / mp, "A/t": a * s * s * b / mp}


def layer_bytes(model: ModelConfig, b: int, mp: int, mode: str, *, query_layer: bool = False) -> float:
    """Bytes one layer keeps for the backward pass, per micro-batch, under recompute `mode`."""
    if mode == "full":
        return 4.0 * b * model.seq_length * model.hidden_size  # the fp32 layer input only
    n = sizes(model, b, mp)
    return sum(x.bytes_per_element * n[x.kind] for x in layer_terms(model, query_layer=query_layer)
               if not (mode == "selective" and x.core))


def working_set(model: ModelConfig, b: int, mp: int, mode: str) -> float:
    """Bytes rebuilt for the one layer whose backward runs (full: a whole layer; selective: its core)."""
    if mode == "full":
        return layer_bytes(model, b, mp, "none", query_layer=True)
    if mode == "selective":
        n = sizes(model, b, mp)
        return sum(x.bytes_per_element * n[x.kind] for x in layer_terms(model) if x.core)
    return 0.0


def coefficients(model: ModelConfig, *, query_layer: bool = False) -> dict[str, float]:
    """The per-layer totals as {kind: bytes per element} (no recompute), for the docs and tests."""
    out: dict[str, float] = {}
    for x in layer_terms(model, query_layer=query_layer):
        out[x.kind] = out.get(x.kind, 0.0) + x.bytes_per_element
    return out


def extras_bytes(model: ModelConfig, b: int, mp: int, *, first: bool, last: bool, vocab_parallel: bool) -> float:
    """Per micro-batch tensors outside the layers: the shared attention bias on every stage,
    the embedding-dropout mask on the first, the final LayerNorm on the last."""
    s, h = model.seq_length, model.hidden_size
    out = 4.0 * b * s * s  # [b, 1, s, s] fp32 additive mask, one copy shared by every layer
    if first and model.dropout > 0:
        out += 1.0 * b * s * h
    if last:
        out += 8.0 * b * s * h
    return out


def head_bytes(model: ModelConfig, b: int, mp: int, *, vocab_parallel: bool) -> float:
    """Peak of the tied head and the loss for one micro-batch on the last stage.

    Vocab-parallel loss (autodiff): exp, log-probabilities and the one-hot pick [T, V/t] fp32
    are kept (12 bytes) and the backward adds two [T, V/t] fp32 gradients (8). The replicated
    `CrossEntropy` (hand-written backward) keeps the fp32 logits and makes two [T, V] fp32
    tensors in its backward (12 bytes).
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
