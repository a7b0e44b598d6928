"""Fused kernels with their reference compositions (STYLE.md "Kernels").

Each kernel is a Cell with a `fused` switch: `fused=True` runs one fused kernel (a MindSpore
kernel, or a C++ kernel built on first use), `fused=False` the reference composition of
ordinary ops (the training model's math).
"""
from pangu_ms.kernels.attention import CacheWriteKernel, DecodeAttentionKernel
from pangu_ms.kernels.linear import (LinearGeluKernel, LinearKernel, LinearResidualKernel, TiedHeadKernel,
                                     cpu_kernel_library)
from pangu_ms.kernels.norm_act import GeluKernel, LayerNormKernel

__all__ = ["CacheWriteKernel", "DecodeAttentionKernel", "GeluKernel", "LayerNormKernel", "LinearGeluKernel", "LinearKernel",
           "LinearResidualKernel", "TiedHeadKernel", "cpu_kernel_library"]
