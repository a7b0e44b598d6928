"""AdamW with the paper's decay groups and the warmup + cosine learning-rate schedule.

The paper (Zeng et al. 2021): AdamW (beta 0.9 / 0.95, eps 1e-8), weight decay 0.1 except on
LayerNorm parameters and biases, linear warmup then cosine decay. Optimizer state (Adam
moments) is fp32 because the parameters are fp32 whatever the compute dtype.

`build_optimizer` makes the `nn.AdamWeightDecay` that holds the state (moments `adam_m.*` /
`adam_v.*`, `global_step`, the schedule). With the fused kernels on CPU the train step applies
that same update with one C++ launch over every parameter instead (`FusedAdamWUpdate`, built
by `pangu_ms.train.step` from the optimizer): the state and its checkpoint names are the same,
so a run can resume with the other kernels.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops

from pangu_ms.config import OptimizerConfig, ScheduleConfig

# LayerNorm gain/shift and every bias are excluded from weight decay
NO_DECAY_SUFFIXES = (".bias", ".gamma", ".beta")


def decays(param_name: str) -> bool:
    """True if the parameter gets weight decay (not a LayerNorm parameter or a bias)."""
    return not param_name.endswith(NO_DECAY_SUFFIXES)


def lr_at(step: int, opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based), the Python twin of `WarmupCosineLR`.

    Warmup: lr * (step + 1) / warmup_steps. After it, cosine from lr to min_lr over
    `decay_steps` (0: the rest of `total_steps`), then min_lr; `kind=constant` stays at lr.
    """
    warmup = sched.warmup_steps
    if step < warmup:
        return opt.lr * (step + 1) / warmup
    if sched.kind == "constant":
        return opt.lr
    decay = sched.decay_steps or max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / decay, 1.0)
    return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(nn.learning_rate_schedule.LearningRateSchedule):
    """Linear warmup then cosine decay, evaluated in the graph: global_step [] int32 -> lr [] fp32."""

    def __init__(self, opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int):
        super().__init__()
        self.peak, self.min_lr = float(opt.lr), float(opt.min_lr)
        self.warmup = float(sched.warmup_steps)
        self.decay = float(sched.decay_steps or max(total_steps - sched.warmup_steps, 1))
        self.constant = sched.kind == "constant"
        self.cos = ops.Cos()
        self.cast = ops.Cast()

    def construct(self, global_step):
        step = self.cast(global_step, ms.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1.0)
        if self.constant:
            decayed = self.peak + 0.0 * step
        else:
            progress = ops.clip_by_value((step - self.warmup) / self.decay, 0.0, 1.0)
            decayed = self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + self.cos(progress * math.pi))
        return ops.select(step < self.warmup, warm, decayed)


def param_groups(params: list[Parameter], weight_decay: float) -> list[dict]:
    """AdamWeightDecay groups: decay on matrices and embeddings, none on LayerNorm/biases (an
    empty group is left out: LoRA adapters, for one, all decay)."""
    decay = [p for p in params if decays(p.name)]
    no_decay = [p for p in params if not decays(p.name)]
    groups = [{"params": g, "weight_decay": wd} for g, wd in ((decay, weight_decay), (no_decay, 0.0)) if g]
    return groups + [{"order_params": params}]


class FusedAdamWUpdate(nn.Cell):
    """The update of an `nn.AdamWeightDecay` (`build_optimizer`) in one launch of the C++
    `FusedAdamW` kernel, on that optimizer's own Parameters: weights, moments, `global_step` and
    learning-rate schedule.

    `construct(grads, factor [] fp32, overflow [] bool) -> applied [] bool`: grads are still
    loss-scaled, `factor` is 1 / (scale x accumulation) times the clip factor; on overflow nothing
    is written and the step counter stays (as the reference step skips the optimizer call).
    """

    def __init__(self, optimizer: nn.AdamWeightDecay, opt: OptimizerConfig):
        super().__init__(auto_prefix=False)
        from pangu_ms.kernels.cpu_training import FusedAdamW

        self.optimizer = optimizer
        self.kernel = FusedAdamW(optimizer.parameters, beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps,
                                 weight_decay=opt.weight_decay, decay=decays, bias_correction=False)
        if not self.kernel.fused:
            raise RuntimeError("FusedAdamWUpdate: the C++ training library is not available here")
        # the optimizer's moments, not fresh copies: one set of state, the reference's names
        self.kernel.moments1 = optimizer.moments1
        self.kernel.moments2 = optimizer.moments2
        self.step_increment = ops.AssignAdd()

    def construct(self, grads, factor, overflow):
        step = self.optimizer.global_step
        lr = self.optimizer.get_lr()  # the schedule at global_step (before this update)
        applied = self.kernel(grads, factor, overflow, lr, (step + 1).reshape(()))
        return ops.depend(applied, self.step_increment(step, ops.cast(applied, ms.int32).reshape(1)))


def build_optimizer(params: list[Parameter], opt: OptimizerConfig, sched: ScheduleConfig,
                    total_steps: int) -> nn.AdamWeightDecay:
    """AdamW (the fused `AdamWeightDecay` kernel) over `params` with the schedule above."""
    lr = WarmupCosineLR(opt, sched, total_steps)
    return nn.AdamWeightDecay(param_groups(params, opt.weight_decay), learning_rate=lr,
                              beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps)
