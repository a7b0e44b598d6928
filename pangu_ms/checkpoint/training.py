"""Checkpoints of a training run: every rank saves its own slices, resume loads them back.

`Checkpointer(run_dir, cell, job, info)` is made once per run. `save(step=...)` on EVERY rank
writes that rank's slices of the train Cell (weights, AdamW moments and counters, loss scale,
accumulators) with `mindspore.save_checkpoint(cell, file, integrated_save=False)`: under
semi-auto parallel on Ascend that call stores the rank's local slices and runs no collective
(the integrated save all-gathers every sliced parameter, and pipeline stages refuse it); on CPU
(one process or data parallel) the local tensors are whole, so the same call writes whole
tensors. The rank then checks its file against the layout computed from our plan, rank 0
writes the shared files, all ranks meet at a barrier that counts the ranks whose files are
written, and rank 0 writes the manifest only if all of them are (`pangu_ms.checkpoint.store`).

`resume(path)` walks the steps newest first. On each, every rank checks the manifest and the
sizes of all files, the sha256 of its own files, and that it can load them; the ranks then agree
(a sum over ranks) and load the newest step every rank can load, naming any step skipped.
A checkpoint written under another mesh is refused with the `checkpoint reshard` command to
run. Under semi-auto parallel the Cell's parameters hold their slices only after the graph is
compiled, so the caller compiles first (`pangu_ms.train.loop`); that path is Ascend-only and has
not been run.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.checkpoint import store
from pangu_ms.checkpoint.collective import RankSum
from pangu_ms.checkpoint.layout import CheckpointLayout, build_layout, plan_parameters
from pangu_ms.config import JobConfig, config_from_dict
from pangu_ms.errors import CheckpointError

logger = logging.getLogger(__name__)

LM_PREFIX = "lm."  # PanguAlphaWithLoss keeps the language model under `lm`
POSITION_KEYS = ("step", "data_step", "tokens_seen")
"""ints saved with every rank's tensors (MindSpore's append_dict): where training stands."""


@dataclass
class CheckpointState:
    """What a resumed run needs besides the tensors."""

    path: Path
    """the step directory that was loaded."""
    step: int
    """optimizer steps completed."""
    data_step: int
    """micro-batches consumed per rank (the dataset's `start_step`)."""
    tokens_seen: int
    """training tokens consumed over all ranks."""
    meta: dict[str, Any]
    """the full meta.json."""


def model_parameter_names(layout: CheckpointLayout) -> set[str]:
    """The layout's tensors that are model weights (`lm.*`)."""
    return {n for n in layout.tensors if n.startswith(LM_PREFIX)}


def _dtype_name(dtype) -> str:
    return str(dtype).lower()


def cell_entries(cell, params: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, full shape, dtype) of every tensor `save_checkpoint(cell)` writes, in its order.

    `cell` is a Cell or the list of {"name", "data"} dicts `save_checkpoint` also takes. Model
    weights and their optimizer state take their full shape from the plan (under semi-auto
    parallel the compiled Cell's parameters hold slices).
    """
    from pangu_ms.checkpoint.layout import base_name

    if isinstance(cell, list):
        items = [(d["name"], tuple(d["data"].shape), _dtype_name(d["data"].dtype)) for d in cell]
    else:
        seen: dict[str, tuple[tuple[int, ...], str]] = {}
        for _, p in cell.parameters_and_names():
            seen.setdefault(p.name, (tuple(p.shape), _dtype_name(p.dtype)))
        items = [(n, s, d) for n, (s, d) in seen.items()]
    out = []
    for name, shape, dtype in items:
        plan = params.get(base_name(name))
        out.append((name, plan.shape if plan is not None else shape, dtype))
    return out + [(k, (), "int64") for k in POSITION_KEYS]


def _mesh_of(job: JobConfig, info) -> Any:
    if info is not None:
        return info.parallel
    return replace(job.parallel, dp=1, mp=1, pp=1, optimizer_shard=False)


class Checkpointer:
    """Saves and resumes one run's train Cell on one rank (see the module docstring)."""

    def __init__(self, run_dir: str | Path, cell, job: JobConfig, info=None):
        self.root = store.checkpoints_root(run_dir)
        self.cell, self.job = cell, job
        self.rank = info.rank if info is not None else 0
        self.world = info.world_size if info is not None else 1
        parallel = _mesh_of(job, info)
        self.params = plan_parameters(job.model, parallel)
        self.layout = build_layout(cell_entries(cell, self.params), self.params, dp=parallel.dp, mp=parallel.mp,
                                   pp=parallel.pp, optimizer_shard=parallel.optimizer_shard)
        if self.layout.world_size != self.world:
            raise CheckpointError(f"the layout has {self.layout.world_size} ranks but {self.world} processes run")
        self.rank_sum = RankSum(self.world)
        on_ascend = info is not None and info.mode == "semi_auto_parallel"
        self.strategy_file = strategy_file_of(job, self.rank) if on_ascend else None
        self._strategy_checked = False

    # ------------------------------------------------------------------ save
    def save(self, *, step: int, data_step: int, tokens_seen: int, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write this rank's part of `checkpoints/step_<step>/`; rank 0 completes it and prunes."""
        fmt = self.job.checkpoint.format
        writer = store.StepWriter(self.root, step, self.rank, self.world, self.layout, fmt)
        position = {"step": step, "data_step": data_step, "tokens_seen": tokens_seen}
        error: Exception | None = None
        try:
            writer.begin()
            writer.write_rank(lambda f: self._save_and_check(f, fmt, position))
            if self.rank == 0:
                meta = {**position, "time": time.time(), "weights": store.WEIGHT_FILES[fmt], **(extra_meta or {})}
                writer.write_shared(meta=meta, config_yaml=self.job.to_yaml(), tokenizer_dir=self.job.tokenizer.path,
                                    params=set(self.params))
        except (OSError, RuntimeError, ValueError) as exc:
            error = exc
        written = self.rank_sum([0.0 if error else 1.0])[0]  # the barrier: every rank has finished writing
        if error is not None:
            if self.world == 1:  # nothing half-written stays behind (with more ranks: skipped as incomplete)
                shutil.rmtree(writer.step_dir, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise error  # a full disk: the CLI's one line says so and how to resume
            raise CheckpointError(f"rank {self.rank} could not write {writer.step_dir}: {error}") from error
        if self.rank == 0:
            if written < self.world:
                logger.error("checkpoint %s is incomplete: %d of %d ranks failed to write their files",
                             writer.step_dir, self.world - int(written), self.world)
                return writer.step_dir
            try:
                writer.write_manifest()
            except (CheckpointError, OSError) as exc:  # e.g. ranks on nodes without a shared filesystem
                logger.error("checkpoint %s stays incomplete: rank 0 cannot describe every rank's files (%s)",
                             writer.step_dir, exc)
                return writer.step_dir
            for old in store.prune(self.root, self.job.checkpoint.keep_last):
                logger.info("removed old checkpoint %s", old)
        logger.info("saved checkpoint %s (rank %d of %d)", writer.step_dir, self.rank, self.world)
        return writer.step_dir

    def _save_and_check(self, path: Path, fmt: str, position: dict[str, int]) -> dict[str, Any] | None:
        """MindSpore's per-rank save, then the file against the layout our plan predicts for this
        rank. A difference does not stop training (the rank can still resume from its own file):
        it is logged and kept in rank.json, and merge/reshard refuse the tensors concerned."""
        _save_cell(self.cell, path, fmt, position)
        self._check_strategy_file()
        problems = self._layout_problems(path)
        if problems:
            logger.warning("rank %d saved tensors the plan's layout does not predict (merge and reshard will refuse "
                           "them): %s", self.rank, "; ".join(problems[:5]))
            return {"layout_mismatch": problems}
        return None

    def _layout_problems(self, path: Path) -> list[str]:
        if path.suffix != ".safetensors":
            return []  # a .ckpt would have to be read whole; its crc is checked on load
        from pangu_ms.checkpoint.safetensors_io import Reader

        r = Reader(path)
        want = {n: self.layout.tensors[n].local_shape for n in self.layout.names_on(self.rank)}
        got = {n: r.info(n)[1] for n in r.names()}
        return [f"{n} saved {got.get(n)} expected {want.get(n)}"
                for n in sorted(set(want) | set(got)) if want.get(n) != got.get(n)]

    def _check_strategy_file(self) -> None:
        """On Ascend MindSpore writes its own strategy file when it compiles the step: compare its
        slices with ours once, so a plan the framework applied differently is reported."""
        if self._strategy_checked or self.strategy_file is None or not self.strategy_file.is_file():
            return
        from pangu_ms.checkpoint.strategy import compare_with_strategy

        self._strategy_checked = True
        differences = compare_with_strategy(self.layout, self.strategy_file, self.rank)
        if differences:
            logger.warning("%s slices %d tensor(s) differently from pangu_ms' layout, e.g. %s", self.strategy_file,
                           len(differences), "; ".join(differences[:3]))

    # ------------------------------------------------------------------ resume
    def resume(self, path: str | Path) -> CheckpointState:
        """Load the newest step under `path` that every rank can load (see the module docstring)."""
        dirs = store.list_step_dirs(path)
        if not dirs:
            raise CheckpointError(f"{path}: no checkpoints (expected checkpoints/step_XXXXXXXX/ directories)")
        skipped: list[str] = []
        for d in dirs:
            tensors, why = self._try_local(d)
            agreed = self.rank_sum([1.0 if tensors is not None else 0.0])[0] == self.world
            if not agreed:
                why = why or "another rank cannot load its files"
                logger.warning("skipping checkpoint %s: %s", d, why)
                skipped.append(f"{d.name}: {why}")
                continue
            state = self._load(d, tensors)
            if skipped:
                logger.warning("resuming from %s, the newest step complete on every rank (skipped %s)", d,
                               ", ".join(s.split(":")[0] for s in skipped))
            logger.info("resumed from %s (step %d)", d, state.step)
            return state
        raise CheckpointError(f"{path}: no loadable checkpoint; {'; '.join(skipped)}")

    def _try_local(self, step_dir: Path) -> tuple[dict | None, str]:
        status = store.check_step(step_dir)
        if not status.complete:
            return None, "; ".join(status.problems)
        if status.legacy:
            if not self.layout.is_whole():
                raise CheckpointError(f"{step_dir} is a one-file checkpoint and this run slices tensors over "
                                      f"{self.layout.mesh()}: reshard it first (python -m pangu_ms checkpoint "
                                      "reshard --ckpt ... --to-config RUN.yaml --out DIR)")
            file = store.legacy_weights(step_dir)
        else:
            saved = store.read_layout(step_dir)
            if problems := saved.compatible(self.layout):
                raise CheckpointError(
                    f"{step_dir} was written for {saved.mesh()} ({saved.world_size} ranks) but this run is "
                    f"{self.layout.mesh()} ({problems[0]}): run `python -m pangu_ms checkpoint reshard --ckpt "
                    f"{step_dir} --to-config RUN.yaml --out NEW_DIR` and resume from NEW_DIR")
            problems = store.verify_rank_files(status, self.rank)
            if problems:
                return None, "; ".join(problems)
            file = store.rank_weights(step_dir, self.rank)
        try:
            return load_file(file), ""
        except CheckpointError as exc:
            return None, str(exc)

    def _load(self, step_dir: Path, tensors: dict) -> CheckpointState:
        meta = store.read_json(step_dir / store.META)
        for key in POSITION_KEYS:
            if key not in tensors:
                raise CheckpointError(f"{step_dir}: checkpoint lacks '{key}' (not written by pangu_ms pretrain)")
        values = {k: int(tensors.pop(k).asnumpy()) for k in POSITION_KEYS}
        missing = load_into(self.cell, tensors, step_dir)
        if missing:
            raise CheckpointError(f"{step_dir}: checkpoint does not fit this model/optimizer; missing "
                                  f"{len(missing)} tensors, e.g. {missing[0]} (same config as the saved run?)")
        return CheckpointState(path=step_dir, meta=meta, **values)


def strategy_file_of(job: JobConfig, rank: int) -> Path:
    """Where `pangu_ms.train.ascend.build_ascend_trainer` has MindSpore write rank `rank`'s strategy."""
    return Path(job.run.output_dir) / "strategy" / f"strategy_rank{rank}.ckpt"


def _save_cell(cell, path: Path, fmt: str, append: dict[str, int]) -> None:
    """MindSpore's per-rank save: the local slices under semi-auto parallel, no collective."""
    import mindspore as ms

    try:
        if fmt == "ckpt":
            ms.save_checkpoint(cell, str(path), integrated_save=False, append_dict=append, crc_check=True)
        else:
            ms.save_checkpoint(cell, str(path), integrated_save=False, append_dict=append, format="safetensors")
    except Exception as exc:  # the safetensors writer reports a full disk as its own error type
        if isinstance(exc, OSError) or not any(os.strerror(e) in str(exc) for e in (errno.ENOSPC, errno.EDQUOT)):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def load_file(path: Path) -> dict:
    """All tensors of one rank file: name -> Parameter. Raises CheckpointError."""
    import mindspore as ms

    try:
        if path.suffix == ".ckpt":
            return ms.load_checkpoint(str(path), crc_check=True)
        return ms.load_checkpoint(str(path), format="safetensors")
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({str(exc).splitlines()[0]}); "
                              "delete this step directory or resume from an older one") from None


def load_into(cell, tensors: dict, step_dir: Path) -> list[str]:
    """load_param_into_net; a shape/dtype mismatch becomes a CheckpointError. Returns missing names."""
    import mindspore as ms

    try:
        missing, _ = ms.load_param_into_net(cell, tensors, strict_load=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{step_dir}: checkpoint does not fit this model/optimizer "
                              f"({str(exc).splitlines()[0]}); resume with the config it was saved with") from None
    return missing


def save(run_dir: str | Path, cell, *, step: int, data_step: int, tokens_seen: int, job: JobConfig, info=None,
         extra_meta: dict[str, Any] | None = None) -> Path:
    """One `Checkpointer(run_dir, cell, job, info).save(...)` (tools and tests; a run keeps one)."""
    return Checkpointer(run_dir, cell, job, info).save(step=step, data_step=data_step, tokens_seen=tokens_seen,
                                                       extra_meta=extra_meta)


def read_tensors(step_dir: Path, rank: int = 0) -> dict:
    """The tensors of rank `rank`'s file of a complete step, checksums verified: name -> Parameter."""
    status = store.check_step(step_dir, verify_ranks=[rank])
    if not status.complete:
        raise CheckpointError(f"{step_dir}: truncated or corrupt checkpoint ({'; '.join(status.problems)})")
    return load_file(store.legacy_weights(step_dir) if status.legacy else store.rank_weights(step_dir, rank))


def load_job_config(step_dir: Path) -> JobConfig:
    try:
        tree = yaml.safe_load((step_dir / store.CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{step_dir / store.CONFIG}: missing or unreadable ({exc})") from None
    return config_from_dict(tree)


def resume(path: str | Path, cell, *, job: JobConfig | None = None, info=None) -> CheckpointState:
    """Load the newest checkpoint under `path` every rank can load into the train Cell `cell`.

    With `job` the checkpoint's mesh is checked against this run's (`Checkpointer.resume`);
    without it (one process, tools) the step's own config is used for the layout check.
    """
    if job is None:
        dirs = store.list_step_dirs(path)
        if not dirs:
            raise CheckpointError(f"{path}: no checkpoints (expected checkpoints/step_XXXXXXXX/ directories)")
        job = load_job_config(dirs[0])
    return Checkpointer(Path(path), cell, job, info).resume(path)


def compile_for_slices(cell, job: JobConfig, batch_size: int) -> None:
    """Compile the semi-auto-parallel train Cell on a zero batch of this rank's `batch_size` rows
    (each data-parallel rank reads 1/dp of the global batch, `pangu_ms.train.ascend.data_sharding`),
    so that its parameters hold this rank's slices before a per-rank checkpoint is loaded into them
    (Ascend only; the CPU backend refuses semi-auto parallel, so this has not been run)."""
    import mindspore as ms
    import numpy as np

    b, s = batch_size, job.model.seq_length
    cell.compile(ms.Tensor(np.zeros((b, s + 1), np.int32)), ms.Tensor(np.zeros((b, s), np.int32)),
                 ms.Tensor(np.zeros((b, s, s), np.float32)))
