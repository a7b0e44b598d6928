"""Process-level parallel setup: `init_parallel(job) -> ParallelInfo`.

Three cases, decided by how the process was launched:
- a single process (no launcher variables): nothing to initialise, rank 0 of 1;
- several processes on CPU (msrun sets `MS_WORKER_NUM`): `mindspore.communication.init()`
  and DATA_PARALLEL with mean gradients (the only mode MindSpore's CPU backend accepts);
- several processes on Ascend (msrun, or a rank table with `RANK_SIZE`): the
  semi-auto-parallel context (`set_ascend_context`), the one function the CPU path skips.
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
    if job.run.device == "Ascend":
        strategy = os.path.join(job.run.output_dir, "strategy", f"strategy_rank{rank}.ckpt")
        set_ascend_context(parallel, world, strategy_file=strategy)
        mode = "semi_auto_parallel"
    else:
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world)
        mode = "data_parallel"
    info = ParallelInfo(rank=rank, world_size=world, dp_rank=c.dp, dp_size=parallel.dp, is_distributed=True,
                        stage=c.stage, mp_rank=c.mp, mode=mode, parallel=parallel)
    log.info("parallel: %s", info)
    return info


def set_ascend_context(parallel: ParallelConfig, world_size: int, *,
                       strategy_file: str | None = None) -> None:
    """Semi-auto parallel on Ascend: pipeline stages, optimizer sharding, strategy checkpoint.

    Not reachable on CPU (MindSpore refuses SEMI_AUTO_PARALLEL on the CPU backend), so it is
    kept declarative: every switch comes from `ParallelConfig`.
    """
    import mindspore as ms

    kwargs = dict(parallel_mode=ms.ParallelMode.SEMI_AUTO_PARALLEL, device_num=world_size,
                  gradients_mean=False, full_batch=True, loss_repeated_mean=True,
                  enable_parallel_optimizer=parallel.optimizer_shard,
                  pipeline_stages=parallel.pp)
    if parallel.optimizer_shard:
        kwargs["parallel_optimizer_config"] = {"gradient_accumulation_shard": False}
    if strategy_file:
        kwargs["strategy_ckpt_config"] = {"save_file": strategy_file, "only_trainable_params": False}
    if parallel.grad_agg_group_mb > 0:
        kwargs["comm_fusion"] = {"allreduce": {"mode": "size", "config": parallel.grad_agg_group_mb}}
    ms.set_auto_parallel_context(**kwargs)
