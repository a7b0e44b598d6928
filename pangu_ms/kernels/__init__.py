"""Fused kernels with their reference compositions (STYLE.md "Kernels").

Each kernel is a Cell with a `fused` switch: `fused=True` runs one MindSpore kernel,
`fused=False` the reference composition of ordinary ops (the training model's math).
"""
from pangu_ms.kernels.norm_act import GeluKernel, LayerNormKernel

__all__ = ["GeluKernel", "LayerNormKernel"]
