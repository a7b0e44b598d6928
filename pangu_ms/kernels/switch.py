"""The one switch between the reference ops and each device's fused kernels (Megatron's spec
provider): `kernel_spec(kernels, device=..., chip=...)` returns the `KernelSpec` a model is
built with.

A spec makes the Cells of the model's fused roles; the model files call these and hold no
device code:

| role | reference (plain MindSpore ops) | CPU `fused` (C++, `cpu_fused`) | Ascend 910B `fused` (`ascend`) |
|---|---|---|---|
| `layer_norm` | `P.LayerNorm` | C++ AddLayerNorm, zero residual | `P.LayerNorm` (CANN's kernel) |
| `add_layer_norm` | Add + `P.LayerNorm` | C++ AddLayerNorm | CANN AddLayerNorm |
| `bias_activation` | Add + `P.GeLU` / `P.FastGeLU` | C++ BiasActivation | Add + `P.GeLU` / `P.FastGeLU` |
| `attention_mask` + `core_attention` | bias from document ids, BatchMatMul, Softmax | C++ FlashAttention on the ids | FlashAttentionScore, uint8 mask |
| `lm_loss` | tied-head MatMul, LogSoftmax, gather | C++ TiedHeadCrossEntropy | reference |
| optimizer update (`fused_optimizer`) | `nn.AdamWeightDecay` | C++ FusedAdamW | reference |

On 910A, on other devices and with `kernels: reference` every role is the reference. A CPU
spec needs the C++ library (`pangu_ms.kernels.cpu_training`): when it cannot be built the
request falls back to the reference with one warning (`cpu_training_library()` says why), and
`spec.name` tells which one was chosen. The C++ attention has no probability dropout, so a
model with `dropout > 0` keeps the reference core on CPU.

Each fused Cell states its own shard strategy (`fused_strategies`); the plans in
`pangu_ms.parallel.plans` cover the reference primitives.
"""
from __future__ import annotations

import logging

from mindspore import nn

from pangu_ms.config import ModelConfig
from pangu_ms.kernels import reference

log = logging.getLogger(__name__)

CHIPS = ("910A", "910B")


class KernelSpec:
    """The reference implementation of every role (plain MindSpore ops); subclasses replace
    roles with fused kernels. Methods build one Cell each; `name` says which spec this is."""

    name = "reference"
    fused_optimizer = False
    """True: the train step applies AdamW with the fused optimizer kernel (`pangu_ms.train.step`)."""

    def __init__(self, device: str = "CPU", chip: str | None = None):
        self.device = device
        """the device the model is built for ('CPU', 'Ascend', ...)."""
        self.chip = chip
        """on Ascend, the generation ('910A', '910B'); None elsewhere."""

    def layer_norm(self, hidden: int, eps: float) -> nn.Cell:
        """x [T, H] -> LayerNorm(x) [T, H] fp32; holds `gamma`, `beta`."""
        return reference.LayerNorm(hidden, eps=eps)

    def add_layer_norm(self, hidden: int, eps: float) -> nn.Cell:
        """(x, residual [T, H]) -> (s = residual + x, LayerNorm(s)) fp32; holds `gamma`, `beta`."""
        return reference.AddLayerNorm(hidden, eps=eps)

    def bias_activation(self, kind: str) -> nn.Cell:
        """(z [T, F], bias [F]) -> act(z + bias); `bias_input` names the op taking the bias."""
        return reference.BiasActivation(kind)

    def attention_mask(self, cfg: ModelConfig) -> nn.Cell:
        """document ids [B, S] int32 -> what `core_attention` takes as its mask (once per forward)."""
        return reference.DocumentMask()

    def core_attention(self, cfg: ModelConfig) -> nn.Cell:
        """(q, k, v [B, N, S, D] compute dtype, q not scaled; mask) -> ctx [B, N, S, D] fp32."""
        return reference.CoreAttention(cfg.head_dim, dropout=cfg.dropout, dtype=cfg.compute_dtype)

    def lm_loss(self, cfg: ModelConfig) -> nn.Cell:
        """(h [T, H], word table [V, H], labels [T] int32) -> mean NLL over non-pad labels []."""
        return reference.TiedHeadCrossEntropy(cfg.pad_id, cfg.compute_dtype)

    def fused_strategies(self, role: str, prefix: str, cfg: ModelConfig) -> dict | None:
        """The shard strategy (op-path glob -> logical strategy) of the fused Cell of `role` at
        `prefix`, or None where this spec uses the reference (the plan's own entries apply)."""
        return None

    def __repr__(self) -> str:
        return f"<KernelSpec {self.name} on {self.device}{' ' + self.chip if self.chip else ''}>"


def detect_chip() -> str | None:
    """The Ascend generation of this device, from MindSpore's SoC name: '910A', '910B' (Atlas
    A2 and A3 alike) or None when unknown (no Ascend device, or a SoC this table lacks)."""
    try:
        from mindspore._c_expression import MSContext

        soc = MSContext.get_instance().get_ascend_soc_version().lower()
    except (ImportError, AttributeError, RuntimeError):
        return None
    if soc.startswith(("ascend910b", "ascend910_93")):
        return "910B"
    if soc == "ascend910":
        return "910A"
    return None


def resolve_chip(chip: str) -> str:
    """`run.ascend_chip` -> '910A' or '910B'; 'auto' asks the device (unknown: 910A, whose
    reference ops run on every generation, with a warning)."""
    if chip in CHIPS:
        return chip
    if chip != "auto":
        raise ValueError(f"ascend chip {chip!r}: use one of 'auto', {', '.join(map(repr, CHIPS))}")
    found = detect_chip()
    if found is None:
        log.warning("run.ascend_chip=auto: could not read the Ascend SoC version; using the 910A kernels "
                    "(reference ops). Set run.ascend_chip=910B on Atlas A2/A3.")
        return "910A"
    return found


def current_device() -> str:
    """The device MindSpore runs on now (`set_device` / the context)."""
    import mindspore as ms

    return ms.get_context("device_target")


def kernel_spec(kernels: str, *, device: str | None = None, chip: str = "auto") -> KernelSpec:
    """The spec for `model.kernels` on `device` (default: MindSpore's current device) and, on
    Ascend, chip generation `chip` (`run.ascend_chip`)."""
    if kernels not in ("reference", "fused"):
        raise ValueError(f"kernels={kernels!r}: use 'reference' or 'fused'")
    device = device or current_device()
    chip = resolve_chip(chip) if device == "Ascend" else None
    if kernels == "fused" and device == "CPU":
        from pangu_ms.kernels.cpu_fused import CpuFusedKernels, cpu_fused_available

        if cpu_fused_available():
            return CpuFusedKernels(device)
    if kernels == "fused" and chip == "910B":
        from pangu_ms.kernels.ascend import Ascend910BKernels

        return Ascend910BKernels(device, chip)
    # reference: asked for, or 910A (no FlashAttentionScore / AddLayerNorm there), or no C++ library
    return KernelSpec(device, chip)


def job_kernel_spec(job) -> KernelSpec:
    """The spec of a `JobConfig`: `model.kernels` on `run.device` with `run.ascend_chip`."""
    return kernel_spec(job.model.kernels, device=job.run.device, chip=job.run.ascend_chip)
