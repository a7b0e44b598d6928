"""The Ascend semi-auto-parallel training step: built without weights, sharded, then wrapped.

MindSpore refuses SEMI_AUTO_PARALLEL on the CPU backend, so nothing here is compiled by the
test suite: construction and what the wrapper will apply are checked on CPU. Under semi-auto
parallel the graph has global semantics: the framework inserts the all-reduces over
model-parallel slices and data-parallel replicas, and `PipelineGradReducer` hands the
accumulated micro-batch gradients to the update.

Order on Ascend (each process, launched by msrun or a rank table):
    info = init_parallel(job)                       # communication only
    net, trainer = build_ascend_trainer(job, info)  # see below
    loss, overflow, norm = trainer.cell(input_ids, position_id, document_id)  # this rank's 1/dp rows

`build_ascend_trainer`: the model, its plan, the optimizer and the step are built inside
`mindspore.nn.utils.no_init_parameters()`, so no weight is materialised on the host; the
blocks are marked lazy-inline; the step (micro-batches inside the graph, then the one gradient
update of `pangu_ms.train.step`, which returns the gradient norm) is wrapped in `AutoParallel`
(`pangu_ms.parallel.context.auto_parallel`), which at compile time slices every parameter by
its layout and initialises only this rank's slice. Each data-parallel rank reads 1/dp of the
global batch (`data_sharding`); the dataset strategy tells MindSpore so.
"""
from __future__ import annotations

import os

from mindspore import nn
from mindspore.ops import functional as F
from mindspore.parallel.nn import PipelineGradReducer
from mindspore.parallel.nn.parallel_grad_reducer import grad_scale, shard_grad_scale

from pangu_ms.config import JobConfig, ParallelConfig
from pangu_ms.train.step import TrainStep, Trainer, new_loss_scale

TRAIN_INPUT_RANKS = (2, 2, 2)
"""Ranks of the step's inputs: input_ids [B, S+1], position_id [B, S], document_id [B, S]
(`pangu_ms.data.dataset.build_dataset`'s columns; a test keeps the two in step). PanGu-Coder's
stage 2 (`masked`) adds loss_mask [B, S]."""


class GradReducer(PipelineGradReducer):
    """`PipelineGradReducer` whose non-sharded branch runs: MindSpore 2.10's names an undefined
    `grads` there (NameError at compile; reproduced on CPU). Same arithmetic: accumulated
    gradients / scale, accumulators zeroed; with optimizer sharding the incoming gradients."""

    def construct(self, *args, **kwargs):
        grads = self.grad_reducer(*args, **kwargs)
        scale = self.scale_sense * self.degree
        if self.opt_shard:
            return self.hyper_map(F.partial(shard_grad_scale, scale), grads, self.accu_grads)
        return self.hyper_map(F.partial(grad_scale, scale), grads, self.grad_reducer(self.accu_grads))


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

    The accumulating reducer only when the step has micro-batches (pipeline or accumulation):
    without them semi-auto parallel reduces the gradients itself, and the accumulators stay zero.
    `parallel` defaults to `job.parallel`; pass `init_parallel(job).parallel` (the mesh in use).
    """
    parallel = parallel or job.parallel
    accum = job.train.grad_accum_steps
    net = wrap_micro_batches(loss_net, parallel, accum)
    reducer = None
    if parallel.pp > 1 or accum > 1:
        reducer = GradReducer(optimizer.parameters, scale_sense=1.0, opt_shard=parallel.optimizer_shard)
    step = TrainStep(net, optimizer, new_loss_scale(job.optimizer), job.optimizer, reducer=reducer)
    step.set_train()
    return step


def data_sharding(job: JobConfig, info) -> dict[str, int]:
    """This rank's slice of the data: 1/dp of each global batch, the same rows for every mp and
    pp rank of a data-parallel replica (`dataset_strategy` splits inputs dp-way)."""
    parallel = info.parallel
    return dict(batch_size=job.train.global_batch_size // parallel.dp, num_shards=parallel.dp,
                shard_id=info.dp_rank)


def build_ascend_trainer(job: JobConfig, info, *, strategy_dir: str | None = None,
                         masked: bool = False) -> tuple[nn.Cell, Trainer]:
    """(evaluation network, trainer) for this rank, as the module docstring describes.

    The evaluation network is the loss network in its own `AutoParallel` wrapper fed whole
    batches (every rank evaluates the same held-out rows). `masked`: the loss network is
    `PanguAlphaWithMaskedLoss` (PanGu-Coder's stage 2), whose fourth input loss_mask the dataset
    strategy splits dp-way like the others."""
    from pangu_ms.kernels.switch import job_kernel_spec
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss, PanguAlphaWithMaskedLoss
    from pangu_ms.parallel.apply import mark_lazy_inline, parallelize_job
    from pangu_ms.parallel.context import auto_parallel
    from pangu_ms.train.optimizer import build_optimizer

    parallel = info.parallel
    with nn.utils.no_init_parameters():
        loss_net = (PanguAlphaWithMaskedLoss if masked else PanguAlphaWithLoss)(job.model, job_kernel_spec(job))
        net = parallelize_job(loss_net, job, info)
        mark_lazy_inline(net)
        optimizer = build_optimizer(net.trainable_params(), job.optimizer, job.schedule, job.train.steps)
        step = ascend_train_cell(net, optimizer, job, parallel)
    strategy_dir = strategy_dir or os.path.join(job.run.output_dir, "strategy")
    wrapped = auto_parallel(step, parallel, input_ranks=TRAIN_INPUT_RANKS + (2,) * masked,
                            strategy_file=os.path.join(strategy_dir, f"strategy_rank{info.rank}.ckpt"))
    # AutoParallel must stay that exact class (MindSpore's compile step recognises it by name), so
    # the loss scale Trainer reads is a plain attribute here, not a second registration of it
    object.__setattr__(wrapped, "loss_scale", step.loss_scale)
    trainer = Trainer(net, optimizer, job.optimizer, cell=wrapped)
    return auto_parallel(net, parallel, full_batch=True), trainer
