"""Fused kernels with their reference compositions (STYLE.md "Kernels").

Each kernel is a Cell with a `fused` switch: `fused=True` runs one fused kernel (a MindSpore
kernel, or a C++ kernel built on first use), `fused=False` the reference composition of
ordinary ops (the training model's math). The model's own compositions that the references
share (GELU, LayerNorm, the attention mask rule) are defined here too: kernels sit below the
models, which import them from here, never the reverse.
"""
from pangu_ms.kernels.attention import (MASK_VALUE, CacheWriteKernel, DecodeAttentionKernel, mask_bias,
                                        slot_index_parts, window_bias)
from pangu_ms.kernels.linear import (LinearGeluKernel, LinearKernel, LinearResidualKernel, TiedHeadKernel,
                                     cpu_kernel_library)
from pangu_ms.kernels.norm_act import GELU, ComposedLayerNorm, GeluKernel, LayerNormKernel

__all__ = ["GELU", "MASK_VALUE", "CacheWriteKernel", "ComposedLayerNorm", "DecodeAttentionKernel", "GeluKernel",
           "LayerNormKernel", "LinearGeluKernel", "LinearKernel", "LinearResidualKernel", "TiedHeadKernel",
           "cpu_kernel_library", "mask_bias", "slot_index_parts", "window_bias"]
