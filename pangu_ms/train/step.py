"""The one gradient update every training path uses, and the step Cells built on it.

One optimizer step, whatever the path (CPU, data parallel, the Ascend pipeline, fine-tuning):
    grads = d(loss * scale)/dW            (per micro-batch; summed over K accumulation steps)
    grads = reduce(grads)                 (data-parallel mean, pipeline accumulation, or none)
    norm  = |grads| / (scale * K)         (global norm of the unscaled gradients)
    overflow = not isfinite(norm)         (the loss scale is halved on overflow, doubled after
                                           `loss_scale_window` clean steps)
    if not overflow:  AdamW(grads / (scale * K) * clip / max(norm, clip))   (else skipped)
and the step returns (loss, overflow, norm). With `fused_update` (the CPU fused kernels) the
last line is one C++ launch over every parameter, taking the scaled gradients, the combined
factor and the overflow flag (`pangu_ms.train.optimizer.FusedAdamWUpdate`): no separate
unscale pass over the gradients and no branch in the graph; the norm is one C++ launch too.

The overflow flag comes from the norm of the reduced gradients, so it is the same on every
data-parallel rank (an inf on one rank reaches all through the all-reduce) and needs no NPU
float-status op, which MindSpore's CPU backend lacks (an `isfinite` reduction instead). Under
semi-auto parallel the gradients have global semantics, so the norm is over the whole
(unsliced) gradients. Steps are Cells, not `@ms.jit` functions, so checkpoint loads reach the
compiled graph. Inputs are passed through (`*inputs`): a step serves any loss network.
"""
from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from pangu_ms.config import OptimizerConfig
from pangu_ms.train.optimizer import FusedAdamWUpdate

_unscale = ops.MultitypeFuncGraph("_unscale")
_square_sum = ops.MultitypeFuncGraph("_square_sum")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(factor, grad):
    return grad * ops.cast(factor, grad.dtype)


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    g = ops.cast(grad, ms.float32)
    return (g * g).sum()


def data_parallel_size() -> int:
    """Ranks whose gradients this process must average (1 unless DATA_PARALLEL/HYBRID)."""
    mode = ms.get_auto_parallel_context("parallel_mode")
    if mode in (ms.ParallelMode.DATA_PARALLEL, ms.ParallelMode.HYBRID_PARALLEL):
        from mindspore.communication import get_group_size

        return get_group_size()
    return 1


def wants_fused_update(network: nn.Cell) -> bool:
    """True when `network` (a loss Cell of `PanguAlphaLM`: it or its `lm` holds the kernel spec)
    was built with the CPU fused kernels, whose spec applies AdamW with the fused kernel too."""
    spec = getattr(network, "kernel_spec", None) or getattr(getattr(network, "lm", None), "kernel_spec", None)
    return bool(spec is not None and spec.fused_optimizer)


class GradientUpdate(nn.Cell):
    """The update of the module docstring: reduce, norm, overflow, loss-scale update, clip, AdamW.

    `reducer` maps the gradient tuple to the reduced one (`nn.DistributedGradReducer` under data
    parallel, MindSpore's `PipelineGradReducer` on Ascend); None with the data-parallel context
    picks the data-parallel mean itself, so CPU callers need not know how they were launched.
    `fused_update` applies `optimizer`'s AdamW with the fused C++ kernel (its state unchanged).
    """

    def __init__(self, optimizer: nn.Optimizer, loss_scale: Parameter, opt: OptimizerConfig, *,
                 reducer: nn.Cell | None = None, fused_update: bool = False):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.fused_update = FusedAdamWUpdate(optimizer, opt) if fused_update else None
        self.square_norm = None
        if fused_update:  # the squared global norm in one C++ pass too
            from pangu_ms.kernels.cpu_training import GradSquaredNorm

            self.square_norm = GradSquaredNorm()
        self.weights = optimizer.parameters
        self.loss_scale = loss_scale
        self.scale_update = nn.DynamicLossScaleUpdateCell(opt.loss_scale, opt.loss_scale_factor,
                                                          opt.loss_scale_window)
        self.clip_norm = float(opt.clip_norm)
        self.hyper_map = ops.HyperMap()
        self.dp = data_parallel_size() if reducer is None else 1
        if reducer is None and self.dp > 1:
            mean = ms.get_auto_parallel_context("gradients_mean")
            reducer = nn.DistributedGradReducer(self.weights, mean=mean, degree=self.dp)
            self.loss_reduce = ops.AllReduce()
        self.reduce = reducer is not None
        self.reducer = reducer

    def mean_over_ranks(self, loss):
        """Per-rank loss [] -> the mean over data-parallel ranks (for logging)."""
        if self.dp > 1:
            return self.loss_reduce(loss) / self.dp
        return loss

    def update(self, grads, inv_scale):
        """Scaled grads (tuple like weights), 1/(scale*K) [] -> (overflow [] bool, grad norm [])."""
        if self.reduce:
            grads = self.reducer(grads)
        # norm of the unscaled gradients from the scaled ones: one elementwise pass (the
        # multiply below) instead of separate unscale and clip passes over every gradient
        if self.square_norm is not None:
            norm = ops.sqrt(self.square_norm(grads)) * inv_scale  # [] fp32
        else:
            norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads))) * inv_scale  # [] fp32
        overflow = ops.logical_not(ops.isfinite(norm))
        overflow = self.scale_update(self.loss_scale, overflow)
        factor = inv_scale
        if self.clip_norm > 0:
            factor = factor * (self.clip_norm / ops.maximum(norm, self.clip_norm))
        if self.fused_update is not None:  # unscale, clip, skip-on-overflow inside the one kernel
            return overflow, ops.depend(norm, self.fused_update(grads, factor, overflow))
        grads = self.hyper_map(ops.partial(_unscale, factor), grads)
        if not overflow:
            norm = ops.depend(norm, self.optimizer(grads))
        return overflow, norm


class TrainStep(GradientUpdate):
    """One micro-batch per optimizer step: inputs of `network` -> (loss [] (mean over
    data-parallel ranks), overflow [] bool, grad norm [] fp32)."""

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, loss_scale: Parameter, opt: OptimizerConfig, *,
                 reducer: nn.Cell | None = None, fused_update: bool = False):
        super().__init__(optimizer, loss_scale, opt, reducer=reducer, fused_update=fused_update)
        self.network = network
        self.network.set_grad()
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.loss_scale * 1.0
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        overflow, norm = self.update(grads, 1.0 / scale)
        return self.mean_over_ranks(loss), overflow, norm


class AccumulateStep(nn.Cell):
    """Forward + backward of one micro-batch; adds loss-scaled gradients into `accum`.
    No communication. Inputs as `TrainStep`; output: loss [] of this rank's micro-batch."""

    def __init__(self, network: nn.Cell, weights: ParameterTuple, accum: ParameterTuple, loss_scale: Parameter,
                 loss_sum: Parameter):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_sum = loss_sum
        self.network.set_grad()
        self.weights = weights
        self.accum = accum
        self.loss_scale = loss_scale
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.ones_like(loss) * ops.cast(self.loss_scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        loss = ops.depend(loss, ops.assign_add(self.loss_sum, loss))
        return ops.depend(loss, self.hyper_map(ops.assign_add, self.accum, grads))


class ApplyStep(GradientUpdate):
    """The optimizer step over `accum` (sum of K loss-scaled micro-batch gradients), which it
    then zeroes. Outputs: mean loss [] (over micro-batches and ranks), overflow [] bool,
    grad norm [] fp32."""

    def __init__(self, optimizer: nn.Optimizer, accum: ParameterTuple, loss_scale: Parameter,
                 loss_sum: Parameter, opt: OptimizerConfig, accum_steps: int, *, fused_update: bool = False):
        super().__init__(optimizer, loss_scale, opt, fused_update=fused_update)
        self.accum = accum
        self.loss_sum = loss_sum
        self.accum_steps = float(accum_steps)

    def construct(self):
        loss = self.mean_over_ranks(self.loss_sum / self.accum_steps)
        overflow, norm = self.update(self.accum, 1.0 / (self.loss_scale * self.accum_steps))
        zeros = ops.depend(self.hyper_map(ops.zeros_like, self.accum), norm)
        overflow = ops.depend(overflow, self.hyper_map(ops.assign, self.accum, zeros))
        overflow = ops.depend(overflow, ops.assign(self.loss_sum, ops.zeros_like(loss)))
        return loss, overflow, norm


class AccumTrainCell(nn.Cell):
    """Container of the accumulate/apply pair: what a checkpoint saves (weights, AdamW state,
    loss scale and its counters, accumulators). Driven from Python by `Trainer.step`."""

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, loss_scale: Parameter,
                 opt: OptimizerConfig, accum_steps: int, *, fused_update: bool = False):
        super().__init__(auto_prefix=False)
        accum = ParameterTuple(optimizer.parameters).clone(prefix="accum", init="zeros")
        loss_sum = Parameter(Tensor(0.0, ms.float32), name="accum.loss_sum", requires_grad=False)
        self.accumulate_step = AccumulateStep(network, optimizer.parameters, accum, loss_scale, loss_sum)
        self.apply_step = ApplyStep(optimizer, accum, loss_scale, loss_sum, opt, accum_steps,
                                    fused_update=fused_update)


@dataclass
class StepResult:
    loss: float
    """mean training loss of the step (over micro-batches and data-parallel ranks)."""
    overflow: bool
    """True if the gradients were not finite and the update was skipped."""
    grad_norm: float
    """global gradient norm before clipping."""
    loss_scale: float
    """loss scale after the step's update."""


def new_loss_scale(opt: OptimizerConfig) -> Parameter:
    """The dynamic loss scale, a non-trainable Parameter saved with the checkpoint."""
    return Parameter(Tensor(opt.loss_scale, ms.float32), name="loss_scale", requires_grad=False)


class Trainer:
    """Builds the step Cell(s) for `network` (a loss Cell) and runs one optimizer step at a time.

    `accum_steps` micro-batches per step are accumulated in Python-driven Cells on CPU. With
    `cell` given (the Ascend step of `pangu_ms.train.ascend`, which micro-batches inside its
    graph), that Cell is run on one global batch per step instead. `cell` is what checkpoints
    save and load (weights, optimizer state, loss scale). The AdamW update is the fused C++
    kernel when `network` was built with the CPU fused kernels (`wants_fused_update`).
    """

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, opt: OptimizerConfig, *, accum_steps: int = 1,
                 cell: nn.Cell | None = None):
        self.optimizer = optimizer
        self.fused_update = cell is None and wants_fused_update(network)
        if cell is not None:
            self.accum_steps, self.cell, self.loss_scale = 1, cell, cell.loss_scale
        else:
            self.accum_steps = accum_steps
            self.loss_scale = new_loss_scale(opt)
            if accum_steps == 1:
                self.cell = TrainStep(network, optimizer, self.loss_scale, opt, fused_update=self.fused_update)
            else:
                self.cell = AccumTrainCell(network, optimizer, self.loss_scale, opt, accum_steps,
                                           fused_update=self.fused_update)
        self.cell.set_train(True)

    def step(self, micro_batches: list[tuple]) -> StepResult:
        """micro_batches: `accum_steps` tuples of the loss network's inputs."""
        if len(micro_batches) != self.accum_steps:
            raise ValueError(f"expected {self.accum_steps} micro-batches, got {len(micro_batches)}")
        if isinstance(self.cell, AccumTrainCell):
            for mb in micro_batches:
                self.cell.accumulate_step(*mb)
            loss, overflow, norm = self.cell.apply_step()
        else:
            loss, overflow, norm = self.cell(*micro_batches[0])
        return StepResult(loss=float(loss.asnumpy()), overflow=bool(overflow.asnumpy()),
                          grad_norm=float(norm.asnumpy()), loss_scale=float(self.loss_scale.asnumpy()))

    @property
    def optimizer_step(self) -> int:
        """Optimizer updates applied so far (skipped overflow steps not counted)."""
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
