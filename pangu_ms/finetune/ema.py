"""An exponential moving average of the weights (Polyak averaging), evaluated and saved."""
from __future__ import annotations

import numpy as np
from mindspore import Tensor

EMA_EVERY = 4  # steps between average updates (each uses decay ema_decay**4): fewer host copies of the weights


class WeightAverage:
    """Exponential moving average of `params`, kept in NumPy float32 next to the live weights.

    update() folds the current values in: avg <- decay * avg + (1 - decay) * current (the first
    call starts the average at the current values); copy_to_params() writes the average into
    the parameters (nothing happens before the first update).
    """

    def __init__(self, params: list, decay: float):
        self.params, self.decay, self.avg = list(params), float(decay), None
        self.updates = 0

    def update(self) -> None:
        current = [p.asnumpy().astype(np.float32) for p in self.params]  # astype copies
        if self.avg is None:
            self.avg = current
        else:
            for a, c in zip(self.avg, current):
                a *= self.decay
                a += (1.0 - self.decay) * c
        self.updates += 1

    def copy_to_params(self) -> None:
        if self.avg is not None:
            for p, a in zip(self.params, self.avg):
                p.set_data(Tensor(a, dtype=p.dtype))
