"""The kernel switch: which implementation (kernels, device, chip) picks, and which operators a
model built with it holds. Ascend's fused operators cannot run on CPU ("unregistered"), so
their dispatch is checked by reading the built model back: operator types and attributes."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from mindspore import Tensor

from pangu_testing import tiny_model_config
from pangu_ms.data.dataset import attention_allowed, eod_reset
from pangu_ms.kernels import ascend, cpu_fused, reference
from pangu_ms.kernels.switch import KernelSpec, job_kernel_spec, kernel_spec, resolve_chip
from pangu_ms.models.pangu_alpha import PanguAlphaLM, PanguAlphaWithLoss

ROWS = np.array([[11, 12, 8, 13, 8, 8, 14, 15, 16], [8, 21, 22, 23, 24, 25, 8, 26, 27]], np.int32)


@pytest.mark.parametrize("kernels,device,chip,want", [
    ("reference", "CPU", "auto", KernelSpec), ("fused", "CPU", "auto", cpu_fused.CpuFusedKernels),
    ("fused", "Ascend", "910B", ascend.Ascend910BKernels), ("fused", "Ascend", "910A", KernelSpec),
    ("reference", "Ascend", "910B", KernelSpec), ("fused", "GPU", "auto", KernelSpec)])
def test_spec_per_kernels_device_and_chip(kernels, device, chip, want):
    spec = kernel_spec(kernels, device=device, chip=chip)
    assert type(spec) is want
    assert spec.device == device and spec.chip == (chip if device == "Ascend" else None)
    assert spec.fused_optimizer == (want is cpu_fused.CpuFusedKernels)


def test_auto_chip_without_an_ascend_device_falls_back_to_910a_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_chip("auto") == "910A"
    assert "run.ascend_chip=910B" in caplog.text
    with pytest.raises(ValueError, match="910C"):
        resolve_chip("910C")


def test_a_job_picks_its_device_and_chip(repo_root):
    from pangu_ms.config import load_config

    job = load_config(repo_root / "ascend_configs" / "runs" / "pangu_alpha_2.6b_8p_910b.yaml")
    assert (job.run.device, job.run.ascend_chip, job.model.compute_dtype) == ("Ascend", "910B", "bfloat16")
    assert type(job_kernel_spec(job)) is ascend.Ascend910BKernels
    job = load_config(repo_root / "ascend_configs" / "runs" / "pangu_alpha_200b_2048p.yaml")
    assert type(job_kernel_spec(job)) is KernelSpec and job_kernel_spec(job).chip == "910A"


def _layout(op: str, layout: str):
    """How a flash operator stores `input_layout` (an enum), from a fresh primitive."""
    from mindspore.ops.auto_generate import gen_ops_prim as prims

    kw = {"head_num": 1} if op == "FlashAttentionScore" else {}
    return getattr(prims, op)(input_layout=layout, **kw).input_layout


@pytest.mark.parametrize("activation,act", [("gelu", "GeLU"), ("fast_gelu", "FastGeLU")])
def test_910b_model_holds_flash_attention_and_add_layer_norm(activation, act):
    cfg = tiny_model_config(compute_dtype="bfloat16", activation=activation, dropout=0.1)
    lm = PanguAlphaLM(cfg, kernel_spec("fused", device="Ascend", chip="910B"))
    bb = lm.backbone
    for layer in (*bb.blocks, bb.query_layer):
        fa = layer.attention.core.flash_attention
        assert type(fa).__name__ == "FlashAttentionScore"
        assert (fa.head_num, fa.sparse_mode, fa.next_tokens) == (cfg.num_heads, 0, 0)
        assert fa.input_layout == _layout("FlashAttentionScore", "BNSD") != _layout("FlashAttentionScore", "TND")
        assert fa.scale_value == pytest.approx(cfg.head_dim ** -0.5) and fa.keep_prob == pytest.approx(0.9)
        assert type(layer.attention.core.drop_gen_mask).__name__ == "DropoutGenMask"
        assert type(layer.ln2.add_layer_norm).__name__ == "AddLayerNormV2"
        assert type(layer.ln1.layer_norm).__name__ == "LayerNorm"  # CANN's kernel: the reference op
        assert type(layer.ffn.linear_fc1.activation.act).__name__ == act
    assert type(bb.attention_mask) is ascend.BlockedMask and type(bb.final_ln) is reference.LayerNorm


def test_910b_fp32_model_keeps_the_reference_attention():
    """FlashAttentionScore takes fp16/bf16 only."""
    lm = PanguAlphaLM(tiny_model_config(), kernel_spec("fused", device="Ascend", chip="910B"))
    assert type(lm.backbone.blocks[0].attention.core) is reference.CoreAttention
    assert type(lm.backbone.attention_mask) is reference.DocumentMask
    assert type(lm.backbone.blocks[0].ln2) is ascend.AddLayerNorm


def test_910a_and_reference_models_hold_plain_ops_only():
    for spec in (kernel_spec("fused", device="Ascend", chip="910A"), kernel_spec("reference", device="CPU")):
        net = PanguAlphaWithLoss(tiny_model_config(compute_dtype="float16"), spec)
        kinds = {type(p).__name__ for _, c in net.cells_and_names() for p in c._primitives.values() if p}
        assert not kinds & {"FlashAttentionScore", "AddLayerNormV2", "Custom"}, kinds
        assert {"LayerNorm", "BatchMatMul", "Softmax", "GeLU", "LogSoftmax"} <= kinds


def test_the_masks_every_role_builds_equal_the_pipeline_rule():
    """Reference bias, 910B blocked mask and the CPU ids pass-through all encode 'j <= i, same
    document' (the blocked mask's ops run on CPU; only FlashAttentionScore does not)."""
    _, doc = eod_reset(np.concatenate([ROWS, ROWS[:, :1]], axis=1), 8)
    allowed = attention_allowed(doc)[:, None]  # [B, 1, S, S]
    bias = reference.DocumentMask()(Tensor(doc)).asnumpy()
    np.testing.assert_array_equal(bias, np.where(allowed, 0.0, -10000.0).astype(np.float32))
    blocked = ascend.BlockedMask()(Tensor(doc)).asnumpy()
    assert blocked.dtype == np.uint8
    np.testing.assert_array_equal(blocked, (~allowed).astype(np.uint8))
    np.testing.assert_array_equal(cpu_fused.DocumentIds()(Tensor(doc)).asnumpy(), doc)


def test_decoder_never_selects_the_cpu_kernels_for_ascend():
    from pangu_ms.infer.decode_ops import CpuStepOps
    from pangu_ms.infer.kv_cache import DecoderCore

    fp16 = tiny_model_config(compute_dtype="float16")
    core = DecoderCore(PanguAlphaLM(fp16, kernel_spec("fused", device="Ascend", chip="910B")), 8, batch_size=2)
    assert not isinstance(core.step_ops, CpuStepOps)
    assert type(core.prompt_ops.core) is ascend.PromptFlashAttention
    assert type(core.step_ops.core) is ascend.IncreFlashAttention
    pfa = core.prompt_ops.core.prompt_flash_attention
    assert (pfa.num_heads, pfa.input_layout, pfa.next_tokens) == (fp16.num_heads, _layout("PromptFlashAttention", "BNSD"), 0)
    ifa = core.step_ops.core.incre_flash_attention
    assert (ifa.num_heads, ifa.input_layout) == (fp16.num_heads, _layout("IncreFlashAttention", "BNSD"))
    core = DecoderCore(PanguAlphaLM(fp16, kernel_spec("fused", device="Ascend", chip="910A")), 8, batch_size=2)
    assert type(core.prompt_ops.core) is reference.CoreAttention and type(core.step_ops.core) is reference.CoreAttention
    fp32 = tiny_model_config()
    core = DecoderCore(PanguAlphaLM(fp32, kernel_spec("fused", device="Ascend", chip="910B")), 8, batch_size=2)
    assert not isinstance(core.step_ops, CpuStepOps) and type(core.step_ops.core) is reference.CoreAttention
    core = DecoderCore(PanguAlphaLM(fp32, kernel_spec("fused", device="CPU")), 8, batch_size=2)
    assert isinstance(core.step_ops, CpuStepOps)  # the CPU model on CPU: the C++ decode kernels


def test_fused_plan_covers_the_fused_kernels():
    """parallelize() accepts the fused models: every fused Cell states its strategy."""
    from pangu_ms.config import ParallelConfig
    from pangu_ms.parallel import parallelize, plan_for
    from pangu_ms.parallel.readback import read_strategies

    for spec, cfg, par in ((kernel_spec("fused", device="CPU"), tiny_model_config(), ParallelConfig(dp=2)),
                           (kernel_spec("fused", device="Ascend", chip="910B"),
                            tiny_model_config(compute_dtype="bfloat16"), ParallelConfig(dp=2, mp=2))):
        net = parallelize(PanguAlphaWithLoss(cfg, spec), plan_for(cfg, par, kernels=spec), par)
        got = read_strategies(net)
        if spec.device == "Ascend":
            fa = got["lm.backbone.blocks.0.attention.core.flash_attention"]
            assert fa == [[2, 2, 1, 1]] * 3 + [[2, 1, 1, 1]]
        else:  # CPU: no semi-auto parallel, every C++ Cell replicated
            assert got["lm.backbone.blocks.0.attention.core.kernel.kernel"] is None
