"""Parallelism for PanGu models, kept out of the model files.

- `init_parallel(job) -> ParallelInfo`: launch detection, communication init (CPU data parallel:
  the DATA_PARALLEL context; Ascend: `context.auto_parallel()` wraps the train Cell instead).
- `validate(model, parallel, devices=, global_batch=)`: every cross-check, before compiling.
- `plan_for(model_cfg, parallel, recompute)`: the shard plan as data ({op path glob: logical strategy}).
- `parallelize(model, plan, parallel)`: the only code that mutates Cells for
  parallelism (shard strategies, pipeline stages, recompute, comm fusion, loss swap).
- `parallelize_job(model, job, info)`: the above with the job's plan on the mesh in use.
- `pangu_ms.train.ascend`: the Ascend train step (Pipeline/GradAccumulation, loss scale).
- `RankLayout`: rank <-> (stage, dp, mp) and communication groups.
- the planner (`plan`): `planner` (build, read back, price), `params` (weight table),
  `activations`, `memory`, `steptime`, `hardware` (device constants), `search`, `dryrun`.
"""
from pangu_ms.parallel.context import ParallelInfo, init_parallel
from pangu_ms.parallel.layout import RankCoords, RankLayout
from pangu_ms.parallel.validate import validate

__all__ = ["ParallelInfo", "init_parallel", "validate", "RankLayout", "RankCoords", "parallelize", "parallelize_job", "plan_for"]


def __getattr__(name: str):
    # parallelize/plan_for import MindSpore; keep `import pangu_ms.parallel` light
    if name == "parallelize":
        from pangu_ms.parallel.apply import parallelize
        return parallelize
    if name == "parallelize_job":
        from pangu_ms.parallel.apply import parallelize_job
        return parallelize_job
    if name == "plan_for":
        from pangu_ms.parallel.plans import plan_for
        return plan_for
    raise AttributeError(name)
