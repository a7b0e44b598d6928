"""One table of names and orientations: our weights and the PanGu-alpha weights people have.

Roles are the model's own (`pangu_ms.models.pangu_alpha.MODEL_WEIGHTS` / `LAYER_WEIGHTS`); each
role maps to its name in every foreign format and says whether that format stores the matrix
transposed relative to ours (ours are [in, out]).

- `released`: the 2021 MindSpore code (`PANGUALPHA_Model`), as in the released 2.6B/13B slices.
  Layers `backbone.blocks.<i>` and `backbone.top_query_layer`; `dense1/2/3` (nn.Dense) store
  [out, in], `projection` and `mapping` [in, out].
- `mindformers`: MindFormers 1.3.2 `PanguAlphaHeadModel` (read from the installed package): as
  released, except that the word and position tables sit under `backbone.embedding.`.
- `hf`: the Hugging-Face `GPTPanguForCausalLM` layout: `transformer.h.<i>` with the query layer
  last; every `nn.Linear` stores [out, in].

The released checkpoints ship the three embedding tables as `.npy` files beside the slices
(`word_embedding.npy`, `position_embedding.npy`, `top_query_embedding.npy`); `NPY_TABLES` names
them. All three formats order the layers as we do: (L-1) blocks, the final LayerNorm, then the
query layer, whose query is the top query embedding; the word table is also the output head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pangu_ms.errors import CheckpointError

FORMATS = ("released", "mindformers", "hf")

# role -> (released/mindformers name inside a layer, transposed there, hf name inside a layer, transposed there)
LAYER_TABLE: dict[str, tuple[str, bool, str, bool]] = {
    "ln1_gamma": ("layernorm1.gamma", False, "ln_1.weight", False),
    "ln1_beta": ("layernorm1.beta", False, "ln_1.bias", False),
    "wq": ("attention.dense1.weight", True, "attn.q_proj.weight", True),
    "bq": ("attention.dense1.bias", False, "attn.q_proj.bias", False),
    "wk": ("attention.dense2.weight", True, "attn.k_proj.weight", True),
    "bk": ("attention.dense2.bias", False, "attn.k_proj.bias", False),
    "wv": ("attention.dense3.weight", True, "attn.v_proj.weight", True),
    "bv": ("attention.dense3.bias", False, "attn.v_proj.bias", False),
    "wo": ("attention.projection.weight", False, "attn.c_proj.weight", True),
    "bo": ("attention.projection.bias", False, "attn.c_proj.bias", False),
    "ln2_gamma": ("layernorm2.gamma", False, "ln_2.weight", False),
    "ln2_beta": ("layernorm2.beta", False, "ln_2.bias", False),
    "w1": ("output.mapping.weight", False, "mlp.c_fc.weight", True),
    "b1": ("output.mapping.bias", False, "mlp.c_fc.bias", False),
    "w2": ("output.projection.weight", False, "mlp.c_proj.weight", True),
    "b2": ("output.projection.bias", False, "mlp.c_proj.bias", False),
}

# role -> name per format (never transposed)
MODEL_TABLE: dict[str, dict[str, str]] = {
    "word_table": {"released": "backbone.word_embedding.embedding_table",
                   "mindformers": "backbone.embedding.word_embedding.embedding_table", "hf": "transformer.wte.weight"},
    "position_table": {"released": "backbone.position_embedding.embedding_table",
                       "mindformers": "backbone.embedding.position_embedding.embedding_table",
                       "hf": "transformer.wpe.weight"},
    "top_query_table": {"released": "backbone.top_query_embedding.embedding_table",
                        "mindformers": "backbone.top_query_embedding.embedding_table", "hf": "transformer.wqe.weight"},
    "final_ln_gamma": {"released": "backbone.layernorm.gamma", "mindformers": "backbone.layernorm.gamma",
                       "hf": "transformer.ln_f.weight"},
    "final_ln_beta": {"released": "backbone.layernorm.beta", "mindformers": "backbone.layernorm.beta",
                      "hf": "transformer.ln_f.bias"},
}

NPY_TABLES = {"word_table": "word_embedding.npy", "position_table": "position_embedding.npy",
              "top_query_table": "top_query_embedding.npy"}
"""the released embedding tables, shipped as .npy files beside the slices."""

HF_TIED_HEAD = "lm_head.weight"
"""the HF output head: equal to `transformer.wte.weight` (tied); written only as that table."""

NON_WEIGHT_PREFIXES = ("adam_m.", "adam_v.", "accu_grads.", "moment1.", "moment2.", "accum.")
NON_WEIGHT_NAMES = {"global_step", "loss_scale", "scale_sense", "current_iterator_step", "last_overflow_iterator_step",
                    "epoch_num", "step_num", "learning_rate", "beta1_power", "beta2_power", "step", "data_step",
                    "tokens_seen"}
"""optimizer and loop state a foreign training checkpoint may carry: skipped (and counted) on import."""

LM = "lm."


@dataclass(frozen=True)
class Mapping:
    """Where one of our weights lives in a foreign format."""

    ours: str
    """our name, with the `lm.` prefix of the training checkpoint."""
    theirs: str
    transposed: bool


def _layer_paths(fmt: str, num_layers: int) -> list[tuple[str, str]]:
    """(our layer path, theirs) for the blocks then the query layer."""
    blocks = [f"backbone.blocks.{i}" for i in range(num_layers - 1)]
    ours = blocks + ["backbone.query_layer"]
    if fmt == "hf":
        return list(zip(ours, [f"transformer.h.{i}" for i in range(num_layers)]))
    return list(zip(ours, blocks + ["backbone.top_query_layer"]))


def mappings(fmt: str, num_layers: int) -> list[Mapping]:
    """Every weight of `PanguAlphaLM` (num_layers layers, the query layer included) in `fmt`."""
    from pangu_ms.models.pangu_alpha import LAYER_WEIGHTS, MODEL_WEIGHTS

    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}: use one of {', '.join(FORMATS)}")
    col = 2 if fmt == "hf" else 0
    out = [Mapping(LM + MODEL_WEIGHTS[role], names[fmt], False) for role, names in MODEL_TABLE.items()]
    for ours, theirs in _layer_paths(fmt, num_layers):
        for role, row in LAYER_TABLE.items():
            out.append(Mapping(f"{LM}{ours}.{LAYER_WEIGHTS[role]}", f"{theirs}.{row[col]}", row[col + 1]))
    return out


def is_non_weight(name: str) -> bool:
    return name in NON_WEIGHT_NAMES or name.startswith(NON_WEIGHT_PREFIXES)


def to_format(fmt: str, ours: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """Our weights (`lm.*`) under `fmt`'s names and orientation, in the table's order."""
    out = {}
    for m in mappings(fmt, num_layers):
        if m.ours not in ours:
            raise CheckpointError(f"the checkpoint lacks weight '{m.ours}' (needed for {fmt} '{m.theirs}')")
        a = ours[m.ours]
        out[m.theirs] = np.ascontiguousarray(a.T) if m.transposed else a
    return out


def from_format(fmt: str, theirs: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], *,
                source: str) -> dict[str, np.ndarray]:
    """`fmt` weights as ours (`lm.*`), checked against the model's `shapes` (our names -> shape).

    Refuses, naming them, weights that are missing, names the table does not know and shapes
    that differ; optimizer and loop state (`NON_WEIGHT_PREFIXES`, `NON_WEIGHT_NAMES`) is skipped.
    """
    num_layers = 1 + sum(1 for n in shapes if n.endswith(".ln1.gamma") and ".blocks." in n)
    table = mappings(fmt, num_layers)
    known = {m.theirs for m in table}
    extra = sorted(n for n in theirs if n not in known and not is_non_weight(n)
                   and not (fmt == "hf" and n == HF_TIED_HEAD))
    missing = [m.theirs for m in table if m.theirs not in theirs]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s), e.g. {', '.join(missing[:3])}")
        if extra:
            parts.append(f"{len(extra)} name(s) this model does not have, e.g. {', '.join(extra[:3])}")
        raise CheckpointError(f"{source}: not a {fmt} checkpoint of this model: {'; '.join(parts)} (is --config the "
                              "model it was trained with?)")
    out, wrong = {}, []
    for m in table:
        a = theirs[m.theirs]
        a = np.ascontiguousarray(a.T) if m.transposed else a
        if tuple(a.shape) != tuple(shapes[m.ours]):
            stored = tuple(shapes[m.ours][::-1]) if m.transposed else tuple(shapes[m.ours])
            wrong.append(f"{m.theirs} is {tuple(theirs[m.theirs].shape)}, expected {stored}")
        out[m.ours] = a
    if wrong:
        raise CheckpointError(f"{source}: {len(wrong)} weight(s) do not fit the model config, e.g. "
                              + "; ".join(wrong[:3]))
    if fmt == "hf" and HF_TIED_HEAD in theirs and not np.array_equal(theirs[HF_TIED_HEAD], out[LM + _word()]):
        raise CheckpointError(f"{source}: {HF_TIED_HEAD} differs from transformer.wte.weight; PanGu-alpha ties the "
                              "output head to the word embedding, an untied head cannot be loaded")
    return out


def _word() -> str:
    from pangu_ms.models.pangu_alpha import MODEL_WEIGHTS

    return MODEL_WEIGHTS["word_table"]


def model_shapes(model_cfg) -> dict[str, tuple[int, ...]]:
    """Our weight names (`lm.*`) -> shape for `model_cfg`, from a model built without weight memory."""
    from mindspore import nn

    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    with nn.utils.no_init_parameters():
        lm = PanguAlphaLM(model_cfg)
    return {LM + n: tuple(p.shape) for n, p in lm.parameters_and_names()}
