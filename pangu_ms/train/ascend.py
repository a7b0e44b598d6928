"""The Ascend semi-auto-parallel training step: micro-batches inside the graph, then the one
gradient update of `pangu_ms.train.step`. The CPU path never reaches this module.

MindSpore refuses SEMI_AUTO_PARALLEL on the CPU backend, so nothing here is compiled by the
test suite: construction is checked on CPU. Under semi-auto parallel the graph has global
semantics: the framework inserts the all-reduces over model-parallel slices and data-parallel
replicas, and `PipelineGradReducer` sums the micro-batch gradients of the pipeline.

Order on Ascend (each process, launched by msrun or a rank table):
    info = init_parallel(job)                      # semi-auto context, pipeline stages, optimizer sharding
    net = parallelize_job(PanguAlphaWithLoss(job.model, job_kernel_spec(job)), job, info)
    step = ascend_train_cell(net, optimizer, job, info.parallel)  # Pipeline / GradAccumulation + the update
    loss, overflow, norm = step(input_ids, position_ids, document_ids)   # one global batch
"""
from __future__ import annotations

from mindspore import nn

from pangu_ms.config import JobConfig, ParallelConfig
from pangu_ms.train.step import TrainStep, new_loss_scale


def wrap_micro_batches(loss_net: nn.Cell, parallel: ParallelConfig, grad_accum_steps: int = 1) -> nn.Cell:
    """Split each step's batch into micro-batches: `Pipeline` when pp > 1 (parallel.micro_batches
    micro-batches per step), `GradAccumulation` for plain accumulation, else `loss_net` itself."""
    from mindspore.parallel.nn import GradAccumulation, Pipeline

    if parallel.pp > 1:
        return Pipeline(loss_net, parallel.micro_batches)
    if grad_accum_steps > 1:
        return GradAccumulation(loss_net, grad_accum_steps)
    return loss_net


def ascend_train_cell(loss_net: nn.Cell, optimizer: nn.Optimizer, job: JobConfig,
                      parallel: ParallelConfig | None = None) -> TrainStep:
    """The Ascend training step for a parallelized loss network (see the module docstring):
    (inputs of the global batch) -> (loss [], overflow [] bool, grad norm [] fp32).

    `parallel` defaults to `job.parallel`; pass `init_parallel(job).parallel` (the mesh in use).
    """
    from mindspore.parallel.nn import PipelineGradReducer

    parallel = parallel or job.parallel
    net = wrap_micro_batches(loss_net, parallel, job.train.grad_accum_steps)
    reducer = PipelineGradReducer(optimizer.parameters, scale_sense=1.0, opt_shard=parallel.optimizer_shard)
    step = TrainStep(net, optimizer, new_loss_scale(job.optimizer), job.optimizer, reducer=reducer)
    step.set_train()
    return step
