"""The Ascend semi-auto-parallel training step: micro-batches, pipeline gradient accumulation,
dynamic loss scale, global-norm clipping. The CPU path never reaches this module.

MindSpore refuses SEMI_AUTO_PARALLEL on the CPU backend, so nothing here is compiled by the
test suite: only construction is checked on CPU. Under semi-auto parallel the graph has
global semantics, so the gradient norm below is the norm over full (unsliced) gradients; the
framework inserts the all-reduces over model-parallel slices.

Order on Ascend (each process, launched by msrun or a rank table):
    info = init_parallel(job)                      # semi-auto context, pipeline stages, optimizer sharding
    net = parallelize_job(PanguAlphaWithLoss(job.model), job, info)
    step = ascend_train_cell(net, optimizer, job, info.parallel)  # Pipeline / GradAccumulation + loss-scaled update
    loss, overflow, scale = step(input_ids, position_ids, attention_mask)   # global batch (full_batch)
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from pangu_ms.config import JobConfig, OptimizerConfig, ParallelConfig

_square_sum = ops.MultitypeFuncGraph("_square_sum")


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    g = ops.cast(grad, ms.float32)
    return (g * g).sum()


def wrap_micro_batches(loss_net: nn.Cell, parallel: ParallelConfig, grad_accum_steps: int = 1) -> nn.Cell:
    """Split each step's batch into micro-batches: `Pipeline` when pp > 1 (parallel.micro_batches
    micro-batches per step), `GradAccumulation` for plain accumulation, else `loss_net` itself."""
    from mindspore.parallel.nn import GradAccumulation, Pipeline

    if parallel.pp > 1:
        return Pipeline(loss_net, parallel.micro_batches)
    if grad_accum_steps > 1:
        return GradAccumulation(loss_net, grad_accum_steps)
    return loss_net


class AscendTrainStep(nn.Cell):
    """One optimizer step over a micro-batched network under semi-auto parallel.

    Inputs are the network's (global batch); outputs loss [], overflow [] bool, scale [].
    grads = d(loss * scale)/dW, accumulated over micro-batches by `PipelineGradReducer`;
    grads /= scale; overflow = not isfinite(|g|); clip to `clip_norm`; AdamW unless overflow.
    """

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, opt: OptimizerConfig, parallel: ParallelConfig):
        super().__init__(auto_prefix=False)
        from mindspore.parallel.nn import PipelineGradReducer

        self.network = network
        self.optimizer = optimizer
        self.weights = ParameterTuple(optimizer.parameters)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.reducer = PipelineGradReducer(self.weights, scale_sense=1.0, opt_shard=parallel.optimizer_shard)
        self.loss_scale = Parameter(Tensor(opt.loss_scale, ms.float32), name="loss_scale")
        self.scale_update = nn.DynamicLossScaleUpdateCell(opt.loss_scale, opt.loss_scale_factor,
                                                          opt.loss_scale_window)
        self.clip_norm = float(opt.clip_norm)
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.loss_scale
        sens = ops.fill(loss.dtype, loss.shape, scale.astype(loss.dtype))
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.reducer(grads)
        inv = ops.reciprocal(scale)
        grads = self.hyper_map(ops.partial(ops.mul, inv), grads)
        norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))  # global view: full gradients
        overflow = ops.logical_not(ops.isfinite(norm))
        overflow = self.scale_update(self.loss_scale, overflow)
        if self.clip_norm > 0:
            factor = ops.minimum(self.clip_norm / (norm + 1e-6), 1.0)
            grads = self.hyper_map(ops.partial(ops.mul, factor), grads)
        if not overflow:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, overflow, scale


def ascend_train_cell(loss_net: nn.Cell, optimizer: nn.Optimizer, job: JobConfig,
                      parallel: ParallelConfig | None = None) -> nn.Cell:
    """The Ascend training step for a parallelized loss network (see the module docstring).

    `parallel` defaults to `job.parallel`; pass `init_parallel(job).parallel` (the mesh in use).
    """
    parallel = parallel or job.parallel
    net = wrap_micro_batches(loss_net, parallel, job.train.grad_accum_steps)
    step = AscendTrainStep(net, optimizer, job.optimizer, parallel)
    step.set_train()
    return step
