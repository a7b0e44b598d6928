"""Compile and run one train step of the tiny test model; run with MS_DEV_SAVE_GRAPHS=1.

    python fp16_graph_probe.py float16|float32

Prints the step's loss as JSON. The caller reads the dtypes in the saved graph IR: what the
compiled graph really computes in, however the model names its operators.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from pangu_testing import tiny_model_config  # noqa: E402
from pangu_ms.config import OptimizerConfig, ScheduleConfig  # noqa: E402
from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss  # noqa: E402
from pangu_ms.train.optimizer import build_optimizer  # noqa: E402
from pangu_ms.train.step import Trainer  # noqa: E402


def main(dtype: str) -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = tiny_model_config(compute_dtype=dtype, kernels="reference")  # the plain ops: their dtypes are read
    ms.set_seed(11)
    net = PanguAlphaWithLoss(cfg)
    opt = OptimizerConfig(lr=1e-3, loss_scale=2.0 ** 10)
    trainer = Trainer(net, build_optimizer(net.trainable_params(), opt, ScheduleConfig(warmup_steps=1), 10), opt)
    b, s = 4, cfg.seq_length
    ids = np.random.default_rng(0).integers(10, cfg.vocab_size, (b, s + 1)).astype(np.int32)
    pos = np.tile(np.arange(s, dtype=np.int32), (b, 1))
    docs = np.zeros((b, s), np.int32)  # one document per row (the model builds the causal mask)
    res = trainer.step([(Tensor(ids), Tensor(pos), Tensor(docs))])
    print(json.dumps({"loss": res.loss, "overflow": res.overflow}))


if __name__ == "__main__":
    main(sys.argv[1])
