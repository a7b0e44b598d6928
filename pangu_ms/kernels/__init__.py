"""Fused kernels with their reference compositions (STYLE.md "Kernels").

Training: `switch.kernel_spec(model.kernels, device=..., chip=...)` is the one switch. It
returns the spec a model is built with: the reference roles of `reference` (plain MindSpore
ops, the model's math), the C++ CPU kernels of `cpu_fused` / `cpu_training`, or the Ascend
910B operators of `ascend`. Decoding: kernel Cells with a `fused` switch each (`attention`,
`linear`, `norm_act`): `fused=True` runs one fused kernel (a MindSpore kernel, or a C++ kernel
built on first use), `fused=False` the reference composition. Kernels sit below the models,
which import them from here, never the reverse.
"""
from pangu_ms.kernels.attention import (MASK_VALUE, CacheWriteKernel, DecodeAttentionKernel, mask_bias,
                                        slot_index_parts, window_bias)
from pangu_ms.kernels.linear import (LinearGeluKernel, LinearKernel, LinearResidualKernel, TiedHeadKernel,
                                     cpu_kernel_library)
from pangu_ms.kernels.norm_act import GELU, ComposedLayerNorm, FastGELU, GeluKernel, LayerNormKernel
from pangu_ms.kernels.switch import KernelSpec, job_kernel_spec, kernel_spec

__all__ = ["GELU", "MASK_VALUE", "CacheWriteKernel", "ComposedLayerNorm", "DecodeAttentionKernel", "FastGELU",
           "GeluKernel", "KernelSpec", "LayerNormKernel", "LinearGeluKernel", "LinearKernel", "LinearResidualKernel",
           "TiedHeadKernel", "cpu_kernel_library", "job_kernel_spec", "kernel_spec", "mask_bias", "slot_index_parts",
           "window_bias"]
