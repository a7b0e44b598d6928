"""MindIR export of the prompt and step graphs (for serving with MindSpore Lite / GraphCell).

The exported graphs are stateless: the cache travels as explicit inputs and outputs
(k, v [L, B, N, M, D]), so the two files can be loaded independently:

    prompt: (input_ids [B, S], position_ids [B, S], pad_len [B]) -> (logits [B, V], k, v)
    step:   (input_ids [B, 1], position_ids [B, 1], slot [], pad_len [B], k, v) -> (logits, k, v)

Shapes are fixed at export time (B = batch_size, S = prompt_length, M = max_length);
prompts shorter than S are left-padded as `pangu_ms.infer.decoder.left_pad` does.
"""
from __future__ import annotations

import logging
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor

from pangu_ms.infer.kv_cache import DecoderCore, ExportPrefill, ExportStep
from pangu_ms.models.pangu_alpha import PanguAlphaLM

log = logging.getLogger(__name__)


def export_mindir(lm: PanguAlphaLM, out_dir: str | Path, *, batch_size: int = 1, prompt_length: int = 32,
                  max_length: int | None = None, fused_kernels: bool = True) -> tuple[Path, Path]:
    """Write `<out_dir>/prompt.mindir` and `<out_dir>/step.mindir`; returns both paths."""
    cfg = lm.config
    m = int(max_length or cfg.seq_length)
    if not 1 <= prompt_length <= m:
        raise ValueError(f"prompt_length={prompt_length} must be in [1, max_length={m}]")
    lm.set_train(False)
    # builtin kernels only: the C++ matrix-vector kernels would tie the MindIR to a local .so;
    # the caches are graph inputs and outputs, so the step graph writes them functionally
    core = DecoderCore(lm, m, batch_size=batch_size, fused_kernels=fused_kernels, cpu_kernels=False,
                       in_place_cache=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b, s = batch_size, prompt_length
    cache = np.zeros((cfg.num_layers, b, cfg.num_heads, m, cfg.head_dim), np.float32)
    ids = Tensor(np.zeros((b, s), np.int32))
    pad = Tensor(np.zeros(b, np.int32))
    prompt_cell, step_cell = ExportPrefill(core), ExportStep(core)
    prompt_cell.set_train(False)
    step_cell.set_train(False)
    one = Tensor(np.zeros((b, 1), np.int32))
    ms.export(prompt_cell, ids, ids, pad, file_name=str(out / "prompt"), file_format="MINDIR")
    ms.export(step_cell, one, one, Tensor(s, ms.int32), pad, Tensor(cache), Tensor(cache),
              file_name=str(out / "step"), file_format="MINDIR")
    log.info("exported %s and %s (batch %d, prompt %d, max_length %d)", out / "prompt.mindir",
             out / "step.mindir", b, s, m)
    return out / "prompt.mindir", out / "step.mindir"
