"""Process-level parallel setup: `init_parallel(job) -> ParallelInfo`.

Three cases, decided by how the process was launched:
- a single process (no launcher variables): nothing to initialise, rank 0 of 1;
- several processes on CPU (msrun sets `MS_WORKER_NUM`): `mindspore.communication.init()`
  and DATA_PARALLEL with mean gradients (the only mode MindSpore's CPU backend accepts);
- several processes on Ascend (msrun, or a rank table with `RANK_SIZE`): communication
  only. The semi-auto-parallel settings no longer go into the process-wide context (MindSpore
  2.10 marks `set_auto_parallel_context` for removal): `auto_parallel(cell, parallel)` wraps
  the top-level train Cell in `mindspore.parallel.auto_parallel.AutoParallel` and records them
  on the wrapper (pipeline stages and schedule, optimizer sharding, data-parallel dataset
  sharding, strategy file, gradient fusion), which MindSpore applies when it compiles the
  wrapper. `read_auto_parallel(wrapper)` reads them back (the tests do, on CPU).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pangu_ms.config import JobConfig, ParallelConfig
from pangu_ms.errors import ConfigError
from pangu_ms.parallel.layout import RankLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelInfo:
    """What a process needs to know about its place in the job."""

    rank: int = 0
    """global rank."""
    world_size: int = 1
    """number of processes."""
    dp_rank: int = 0
    """data-parallel index (selects the data shard)."""
    dp_size: int = 1
    """data-parallel degree (number of data shards)."""
    is_distributed: bool = False
    """True when `mindspore.communication.init()` ran."""
    stage: int = 0
    """pipeline stage of this rank."""
    mp_rank: int = 0
    """model-parallel index of this rank."""
    mode: str = "stand_alone"
    """stand_alone, data_parallel or semi_auto_parallel."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """the mesh in use (the config's, or dp scaled to the launch for a dp-only config)."""


def launched_world_size(env: dict[str, str] | None = None) -> int:
    """Process count announced by the launcher (msrun: MS_WORKER_NUM; rank table: RANK_SIZE)."""
    env = os.environ if env is None else env
    for var in ("MS_WORKER_NUM", "RANK_SIZE"):
        value = env.get(var, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise ConfigError(f"environment variable {var}={value!r} is not an integer") from None
    return 1


def effective_parallel(parallel: ParallelConfig, world_size: int) -> ParallelConfig:
    """The mesh to run with: the config's, or dp = world size for a dp-only config left at 1.

    A config written for one process (dp = mp = pp = 1) launched on N workers runs N-way
    data parallel; any other mismatch between dp*mp*pp and N is an error.
    """
    if parallel.devices == world_size:
        return parallel
    if parallel.devices == 1:
        log.info("parallel.dp=1 but %d processes were launched: running %d-way data parallel",
                 world_size, world_size)
        kwargs = {**parallel.__dict__, "dp": world_size}
        return ParallelConfig(**kwargs)
    raise ConfigError(
        f"parallel.dp*mp*pp = {parallel.dp}*{parallel.mp}*{parallel.pp} = {parallel.devices} but "
        f"{world_size} process(es) were launched; launch {parallel.devices} workers "
        f"(msrun --worker_num={parallel.devices}) or change parallel.dp/mp/pp to multiply to {world_size}")


def init_parallel(job: JobConfig) -> ParallelInfo:
    """Initialise communication and the parallel context for `job`; return this rank's place.

    Runs `validate()` on the effective mesh before anything compiles. Single process: no-op.
    """
    from pangu_ms.parallel.validate import validate

    world = launched_world_size()
    if world <= 1:
        if job.parallel.devices > 1:
            log.warning("parallel config asks for %d devices but this is a single process: running stand-alone",
                        job.parallel.devices)
        return ParallelInfo(parallel=ParallelConfig(**{**job.parallel.__dict__, "dp": 1, "mp": 1, "pp": 1}))
    parallel = effective_parallel(job.parallel, world)
    validate(job.model, parallel, devices=world, global_batch=job.train.global_batch_size,
             grad_accum_steps=job.train.grad_accum_steps, device=job.run.device)

    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    ms.set_device(job.run.device)
    init()
    rank, world = get_rank(), get_group_size()
    layout = RankLayout(dp=parallel.dp, mp=parallel.mp, pp=parallel.pp)
    c = layout.coords(rank)
    if job.run.device == "Ascend":  # the parallel settings ride on the AutoParallel wrapper (train/ascend.py)
        mode = "semi_auto_parallel"
    else:
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world)
        mode = "data_parallel"
    info = ParallelInfo(rank=rank, world_size=world, dp_rank=c.dp, dp_size=parallel.dp, is_distributed=True,
                        stage=c.stage, mp_rank=c.mp, mode=mode, parallel=parallel)
    log.info("parallel: %s", info)
    return info


# pipeline_scheduler -> AutoParallel.pipeline(interleave=..., scheduler=...). MindSpore 2.10 accepts
# gpipe only through its interleaved pass (`set_pipeline_config` refuses gpipe without interleave)
SCHEDULERS: dict[str, tuple[bool, str]] = {"1f1b": (False, "1f1b"), "gpipe": (True, "gpipe"),
                                           "interleaved_1f1b": (True, "1f1b")}

OPT_SHARD_THRESHOLD_KB = 64
"""`AutoParallel.hsdp(threshold=...)`: slices below 64 KB keep their whole optimizer state."""


def dataset_strategy(parallel: ParallelConfig, input_ranks: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Each input split dp-way over its batch (first) axis: a data-parallel rank reads only its
    1/dp of the global batch, and the mp (and pp) ranks of one replica read the same rows."""
    return tuple((parallel.dp,) + (1,) * (rank - 1) for rank in input_ranks)


def auto_parallel(cell, parallel: ParallelConfig, *, input_ranks: tuple[int, ...] | None = None,
                  strategy_file: str | None = None, full_batch: bool = False):
    """`cell` wrapped in `AutoParallel(..., "semi_auto")` with every switch from `parallel`.

    `input_ranks`: the rank of each input of `cell` (dataset sharding, see `dataset_strategy`);
    `full_batch=True` feeds every rank the whole batch instead (the held-out evaluation).
    Only compiling the wrapper (Ascend) applies the settings; constructing it works anywhere.
    """
    from mindspore.parallel.auto_parallel import AutoParallel

    net = AutoParallel(cell, parallel_mode="semi_auto")
    if full_batch or input_ranks is None:
        net.dataset_strategy("full_batch")
    else:
        net.dataset_strategy(dataset_strategy(parallel, input_ranks))
    if parallel.pp > 1:
        interleave, scheduler = SCHEDULERS[parallel.pipeline_scheduler]
        net.pipeline(stages=parallel.pp, interleave=interleave, scheduler=scheduler)
    if parallel.optimizer_shard:
        net.hsdp(threshold=OPT_SHARD_THRESHOLD_KB, optimizer_level="level1")
    if strategy_file:
        net.save_param_strategy_file(strategy_file)
        net.disable_strategy_file_only_for_trainable_params()  # optimizer state and loss scale too
    if parallel.grad_agg_group_mb > 0:
        net.comm_fusion({"allreduce": {"mode": "size", "config": parallel.grad_agg_group_mb}})
    return net


def read_auto_parallel(net) -> dict:
    """What an `AutoParallel` wrapper will apply at compile time, as plain data.

    MindSpore keeps these on the wrapper (the attributes its compile step reads); there is no
    public getter for most of them.
    """
    def get(name: str):
        return getattr(net, name)

    return {"parallel_mode": get("_parallel_mode"), "dataset_strategy": get("_dataset_strategy_config"),
            "full_batch": get("_full_batch"), "pipeline_stages": net.get_pipeline_stages(),
            "pipeline_interleave": get("_pipeline_interleave"), "pipeline_scheduler": get("_pipeline_scheduler"),
            "optimizer_shard": get("_enable_parallel_optimizer"),
            "optimizer_level": getattr(net, "_optimizer_level", None),
            "optimizer_threshold_kb": get("_parallel_optimizer_threshold"),
            "strategy_file": get("_save_strategy_file_path"), "only_trainable_params": get("_only_trainable_params"),
            "comm_fusion": get("_comm_fusion_config"), "gradients_mean": get("_gradients_mean"),
            "loss_repeated_mean": get("_loss_repeated_mean"), "init_param_in_compile": get("_init_param_in_compile")}
