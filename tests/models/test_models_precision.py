"""Mixed precision, checked by the dtypes the ops of the compiled train step are called with.

The graph read is the one MindSpore's frontend hands to the device backend (after type
inference and autodiff): the forward, the backward and the optimizer update. fp16 (910A)
and bf16 (910B) compute put every weight matmul and attention product in the low dtype and
keep LayerNorm (and its gradient), the softmax, the loss and AdamW in fp32.

On CPU the fp16 graph also runs: MindSpore's CPU backend has no fp16 MatMul kernel, so it
runs those matmuls as fp32 kernels on fp16-rounded operands (its kernel-selected graph shows
the casts), which is why fp16 is slower than fp32 there. The bf16 graph is the 910B model
(FlashAttentionScore, AddLayerNorm) built on CPU: the frontend compiles it, the CPU backend
then refuses bf16 matmuls, so that one is checked by its dtypes only.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import compiled_op_dtypes, tiny_model_config
from pangu_ms.config import OptimizerConfig, ScheduleConfig
from pangu_ms.data.dataset import eod_reset
from pangu_ms.kernels.switch import kernel_spec
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
from pangu_ms.train.optimizer import build_optimizer
from pangu_ms.train.step import Trainer

MATMULS = {"MatMul", "BatchMatMul"}
FP32_OPS = {"LayerNorm", "LayerNormGrad", "Softmax", "SoftmaxBackward", "LogSoftmax", "LogSoftmaxGrad",
            "AddLayerNormV2", "AddLayerNormGrad", "AdamWeightDecay"}
WATCHED = MATMULS | FP32_OPS | {"FlashAttentionScore", "FlashAttentionScoreGrad"}


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.integers(10, cfg.vocab_size, (2, cfg.seq_length + 1)).astype(np.int32)
    rows[0, 5] = cfg.eod_id
    pos, doc = eod_reset(rows, cfg.eod_id)
    return Tensor(rows), Tensor(pos), Tensor(doc)


def _train_step(cfg, spec):
    import mindspore as ms

    ms.set_seed(4)
    net = PanguAlphaWithLoss(cfg, spec)
    opt = OptimizerConfig(lr=1e-3, loss_scale=1024.0)
    trainer = Trainer(net, build_optimizer(net.trainable_params(), opt, ScheduleConfig(warmup_steps=1), 10), opt)
    return net, trainer


def _check_mixed(found, low: str):
    assert found.keys() & MATMULS, found.keys()
    for op in MATMULS & found.keys():
        assert all(t[:2] == (low, low) for t in found[op]), (op, found[op])
    for op in FP32_OPS & found.keys():
        assert all(set(t) <= {"Float32", "Int32", "Int64", "Bool"} for t in found[op]), (op, found[op])
    assert {"LayerNorm", "LayerNormGrad", "LogSoftmax", "AdamWeightDecay"} <= found.keys()


def test_fp16_compute_runs_matmuls_in_fp16_and_keeps_the_rest_fp32(tmp_path):
    cfg = tiny_model_config(compute_dtype="float16", kernels="reference")
    net, trainer = _train_step(cfg, kernel_spec("reference", device="CPU"))
    batch = _batch(cfg)
    # the fp16 model's loss is not the fp32 model's (same weights), but close
    loss16 = float(net(*batch).asnumpy())
    net32, _ = _train_step(tiny_model_config(kernels="reference"), kernel_spec("reference", device="CPU"))
    loss32 = float(net32(*batch).asnumpy())
    assert 0.0 < abs(loss16 - loss32) < 1e-2 and math.isfinite(loss16)
    found = compiled_op_dtypes(trainer.cell, batch, tmp_path / "ir", WATCHED)  # compiles (and runs) one step
    _check_mixed(found, "Float16")
    assert {"Softmax", "SoftmaxBackward"} <= found.keys()
    assert all(str(p.dtype) == "Float32" for p in trainer.cell.get_parameters() if p.name.startswith(("lm.", "adam_")))


def test_bf16_910b_graph_types(tmp_path):
    """The 910B model as its frontend graph: bf16 matmuls and flash attention, fp32 elsewhere."""
    cfg = tiny_model_config(compute_dtype="bfloat16", num_heads=2)  # head dim 16: the operator's multiple
    _, trainer = _train_step(cfg, kernel_spec("fused", device="Ascend", chip="910B"))
    found = compiled_op_dtypes(trainer.cell, _batch(cfg), tmp_path / "ir", WATCHED)
    _check_mixed(found, "BFloat16")
    for op in ("FlashAttentionScore", "FlashAttentionScoreGrad"):
        assert found[op] and all(t[:3] == ("BFloat16",) * 3 for t in found[op]), found.get(op)
    assert "AddLayerNormV2" in found and "Softmax" not in found  # the fused operators, not the reference


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_fp32_compute_has_no_low_precision_op(tmp_path, kernels):
    cfg = tiny_model_config(kernels=kernels)
    _, trainer = _train_step(cfg, kernel_spec(kernels, device="CPU"))
    found = compiled_op_dtypes(trainer.cell, _batch(cfg), tmp_path / "ir")
    low = {op for op, types in found.items() for t in types if {"Float16", "BFloat16"} & set(t)}
    assert not low, low
