"""The MindSpore execution context every command sets before running a Cell (pretrain, generate,
eval, finetune): graph or PyNative mode on the configured device."""
from __future__ import annotations

from pangu_ms.config import RunConfig


def setup_context(run: RunConfig, device: str | None = None) -> None:
    """GRAPH_MODE (or PyNative if `run.mode` says so) on `device` or `run.device`.

    MindSpore's default is PyNative, many times slower than a compiled graph on CPU: the
    commands must set the mode before running any Cell.
    """
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if run.mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device(device or run.device)
