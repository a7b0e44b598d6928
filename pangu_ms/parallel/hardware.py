"""The planner's devices: one table of constants per device, each with where it comes from.

Every number the planner uses for memory budgets and speed lives here and nowhere else.
`DEVICES` maps a name (`plan --device NAME`) to a `DeviceSpec`; `constant_table(name)` lists
the constants with their sources, as `plan` prints them. Sources are named in `SOURCES`;
entries marked "assumption" are modelling choices, not measurements, and are the first thing
to replace with a measured figure (a profiled step, a dry run's memory report).

The CPU entry is not for planning Ascend jobs: it holds this machine's own constants, measured
by `bench/planner_memory.py`, so the memory model can be checked against peak RSS here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

GB = 2**30
"""bytes in one GB as the planner counts it (binary: HBM sizes are powers of two; printed as GiB)."""

SOURCES: dict[str, str] = {
    "atlas900": "Huawei, Atlas 900 / Ascend 910 launch (2019-08): 256 TFLOPS fp16 per Ascend 910, HCCS inside a "
                "server, PCIe 4.0 to the host, 100 GbE between servers",
    "hotchips19": "Huawei, Hot Chips 31 (2019) Ascend 910 talk: 3 HCCS ports of 240 Gb/s (30 GB/s) per chip",
    "affinity": "hiascend MindCluster affinity scheduling guide: Atlas training products connect four processors "
                "by HCCS and the two HCCS rings through PCIe; Atlas 800T A2 connects all eight",
    "atlas300t": "Atlas 300T training card (model 9000) white paper: one 100G Ethernet port per card for "
                 "inter-server collectives",
    "third_party_910b": "third-party spec summaries of the Ascend 910B (no Huawei datasheet was reachable from "
                        "here): ~313 TFLOPS fp16 for the 910B3, 64 GB HBM, HCCS full mesh of 8 at 56 GB/s per "
                        "link (392 GB/s per chip), one 200 GbE RoCE port per NPU; unverified",
    "dryrun_doc": "MindSpore 2.10 DryRun tutorial: a 64 GB device reports 'MindSpore Used memory size: 59392M' "
                  "(58 GB); its example peak is 26244M with fragments against 23716M without (+10.7 %)",
    "issue17": "issue 17: MindSpore is usually given 30 GB of a 32 GB card and 58 GB of a 64 GB one",
    "hccl_buffsize": "CANN HCCL_BUFFSIZE: default 200 MB; each communicator holds 2 x HCCL_BUFFSIZE (send and "
                     "receive), outside the memory MindSpore's pool manages",
    "assumption": "modelling assumption (not measured): replace it with a figure from a profiled run",
    "bench": "measured on this machine by bench/planner_memory.py (MindSpore 2.10 CPU, fp32); see "
             "docs/parallel_and_launch.md, 'Checked on CPU'",
}


@dataclass(frozen=True)
class Const:
    """One constant: its value, unit and the key of its source in `SOURCES`."""

    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class DeviceSpec:
    """What the planner knows about one accelerator and the server it sits in."""

    name: str
    """device name, as given to `plan --device`."""
    memory_gb: Const
    """device memory (HBM)."""
    usable_gb: Const
    """memory given to MindSpore's pool (`max_device_memory`): weights, activations, workspaces."""
    peak_tflops: Const | None
    """dense fp16 matmul peak (None: not a planning target)."""
    efficiency: Const | None
    """fraction of the peak a large-model training step sustains on its matmuls."""
    devices_per_server: int = 8
    """NPUs in one server."""
    hccs_group: int = 8
    """NPUs fully connected by HCCS inside a server (910A: two groups of four)."""
    hccs_link_gbs: Const | None = None
    """GB/s of one HCCS link between two NPUs of a group."""
    cross_group_gbs: Const | None = None
    """GB/s per NPU between the HCCS groups of one server (910A: PCIe)."""
    roce_gbs: Const | None = None
    """GB/s per NPU to other servers (RoCE)."""
    link_efficiency: Const | None = None
    """achieved fraction of link bandwidth in a collective."""
    latency_us: Const | None = None
    """per-step latency of a collective algorithm step (alpha)."""
    hccl_buffer_mb: Const = Const(200, "MB", "hccl_buffsize")
    """HCCL_BUFFSIZE; each communicator holds two."""
    framework_reserve_gb: Const = Const(1.0, "GB", "assumption")
    """runtime, streams, compiled graphs and kernels inside the pool."""
    fragmentation: Const = Const(0.10, "fraction", "dryrun_doc")
    """extra pool memory lost to fragmentation, as a fraction of the dynamic (non-state) memory."""
    activation_coeffs: dict[str, dict[str, float]] = field(default_factory=dict)
    """measured per-layer activation coefficients by recompute mode (CPU only; empty: derived)."""
    measured_kernels: str | None = None
    """the kernel spec (`KernelSpec.name`) whose runs `activation_coeffs` were fitted on; a model
    that builds other kernels here is refused (its tensors differ)."""

    def const(self, name: str) -> Const:
        value = getattr(self, name)
        if not isinstance(value, Const):
            raise KeyError(f"{self.name} has no constant {name!r}")
        return value


_910A = DeviceSpec(
    name="910A",
    memory_gb=Const(32, "GB", "atlas900"),
    usable_gb=Const(30, "GB", "issue17"),
    peak_tflops=Const(256, "TFLOPS", "atlas900"),
    efficiency=Const(0.45, "fraction", "assumption"),
    hccs_group=4,
    hccs_link_gbs=Const(30, "GB/s", "hotchips19"),
    cross_group_gbs=Const(16, "GB/s", "assumption"),
    roce_gbs=Const(12.5, "GB/s", "atlas300t"),
    link_efficiency=Const(0.8, "fraction", "assumption"),
    latency_us=Const(10, "us", "assumption"),
)

_910B = DeviceSpec(
    name="910B",
    memory_gb=Const(64, "GB", "third_party_910b"),
    usable_gb=Const(58, "GB", "dryrun_doc"),
    peak_tflops=Const(313, "TFLOPS", "third_party_910b"),
    efficiency=Const(0.45, "fraction", "assumption"),
    hccs_group=8,
    hccs_link_gbs=Const(56, "GB/s", "third_party_910b"),
    cross_group_gbs=None,
    roce_gbs=Const(25, "GB/s", "third_party_910b"),
    link_efficiency=Const(0.8, "fraction", "assumption"),
    latency_us=Const(10, "us", "assumption"),
)

_910B_32 = DeviceSpec(**{**{f.name: getattr(_910B, f.name) for f in fields(_910B)},
                         "name": "910B-32GB", "memory_gb": Const(32, "GB", "third_party_910b"),
                         "usable_gb": Const(30, "GB", "issue17")})

# measured by bench/planner_memory.py --calibrate (2026-12-01, MindSpore 2.10.0 CPU, fp32, no dropout,
# kernels: fused; 42 runs, fit error at most 2.5 %): peak RSS of a train step
# = base + sigma N (weights, gradients, Adam m and v, the step's gradient copies) + L (c_layer + c_TH T H)
# + c_TV T V, for the runs' kernels (`measured_kernels`: the C++ CPU spec, fp32, no dropout)
_CPU = DeviceSpec(
    name="CPU",
    memory_gb=Const(0, "GB", "bench"),
    usable_gb=Const(0, "GB", "bench"),
    peak_tflops=None,
    efficiency=None,
    framework_reserve_gb=Const(0.4747, "GB", "bench"),  # the process: Python, MindSpore, compiled graphs
    fragmentation=Const(0.0, "fraction", "bench"),
    # bytes: per layer and T H element by recompute mode, head per T V, states per parameter and per layer
    activation_coeffs={
        "none": {"TH": 204.0},
        "selective": {"TH": 203.1},
        "full": {"TH": 263.6},
        "head": {"TV": 2.814}, "states": {"sigma": 25.28, "layer": 1.502e+07}},
    measured_kernels="cpu_fused",
)

DEVICES: dict[str, DeviceSpec] = {d.name: d for d in (_910A, _910B, _910B_32, _CPU)}
PLANNING_DEVICES = ("910A", "910B", "910B-32GB")


def device_spec(name: str) -> DeviceSpec:
    """The spec of device `name` (case-insensitive); a clear error naming the choices."""
    for key, spec in DEVICES.items():
        if key.lower() == name.lower():
            return spec
    from pangu_ms.errors import ConfigError

    raise ConfigError(f"unknown device {name!r}: use one of {', '.join(PLANNING_DEVICES)}")


def constant_table(spec: DeviceSpec) -> list[dict[str, Any]]:
    """Every constant of `spec` as {name, value, unit, source} rows (source spelt out)."""
    rows = []
    for f in fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, Const):
            rows.append({"name": f.name, "value": value.value, "unit": value.unit, "source": value.source,
                         "source_text": SOURCES[value.source]})
        elif isinstance(value, int) and f.name != "name":
            rows.append({"name": f.name, "value": value, "unit": "", "source": "affinity",
                         "source_text": SOURCES["affinity"]})
    return rows
