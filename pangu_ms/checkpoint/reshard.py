"""Merge a per-rank checkpoint into one, or reshard it to another layout: pure NumPy, streaming.

Work goes tensor by tensor: the full tensor is assembled from the ranks that hold its pieces
(one rank per distinct piece, read straight from the memory-mapped safetensors file into the full
array), then every target rank's slice of it is appended to that rank's output file, whose header
was written up front (`StreamWriter`). Peak memory is therefore about the largest tensor (plus
one target slice when that slice is not contiguous), not the model; `.ckpt` rank files are first
rewritten as safetensors one rank file at a time. Both directions use the same slice math
(`CheckpointLayout.region`), so merge(reshard(x)) == x bit for bit, optimizer state included.
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pangu_ms.checkpoint import store
from pangu_ms.checkpoint.layout import CheckpointLayout, build_layout
from pangu_ms.checkpoint.safetensors_io import Reader, StreamWriter, numpy_dtype
from pangu_ms.errors import CheckpointError

logger = logging.getLogger(__name__)
MAX_OPEN_FILES = 256


class RankSource:
    """The tensors of one step directory's rank files, read piece by piece."""

    def __init__(self, step_dir: Path, layout: CheckpointLayout, *, legacy: bool = False):
        self.step_dir, self.layout, self.legacy = step_dir, layout, legacy
        self._readers: dict[int, Reader] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _file(self, rank: int) -> Path:
        return store.legacy_weights(self.step_dir) if self.legacy else store.rank_weights(self.step_dir, rank)

    def reader(self, rank: int) -> Reader:
        if rank not in self._readers:
            f = self._file(rank)
            if f.suffix == ".ckpt":
                f = self._as_safetensors(f, rank)
            self._readers[rank] = Reader(f)
        return self._readers[rank]

    def _as_safetensors(self, ckpt: Path, rank: int) -> Path:
        """A MindSpore .ckpt rank file rewritten as safetensors in a temporary directory."""
        import mindspore as ms

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pangu_ckpt_")
        try:
            params = ms.load_checkpoint(str(ckpt), crc_check=True)
        except (ValueError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"{ckpt}: truncated or corrupt ({str(exc).splitlines()[0]})") from None
        arrays = {n: _param_array(p) for n, p in params.items()}
        out = Path(self._tmp.name) / f"rank_{rank}.safetensors"
        with StreamWriter(out, [(n, _dtype_of(p), a.shape) for (n, a), p in zip(arrays.items(), params.values())]) as w:
            for n, a in arrays.items():
                w.write(n, a)
        return out

    def read_into(self, rank: int, name: str, out: np.ndarray) -> None:
        self.reader(rank).read_into(name, out)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _param_array(p) -> np.ndarray:
    import mindspore as ms

    if p.dtype == ms.bfloat16:
        raise CheckpointError(f"tensor '{p.name}' is bfloat16 in a .ckpt rank file: NumPy cannot hold it bit-exactly; "
                              "save with checkpoint.format=safetensors")
    return p.asnumpy()


def _dtype_of(p) -> str:
    return str(p.dtype).lower()


def assemble(source: RankSource, name: str) -> np.ndarray:
    """The full tensor `name` from the pieces its holders store."""
    t = source.layout.tensors[name]
    full = np.empty(t.shape, numpy_dtype(t.dtype))
    whole = tuple(slice(0, n) for n in t.shape)
    covered = 0
    for rank, region in source.layout.holders(name, whole):
        want = tuple(s.stop - s.start for s in region)
        stored = source.reader(rank).info(name)[1]
        if stored != want:
            raise CheckpointError(f"{source.step_dir}: rank {rank} stores '{name}' as {stored}, the "
                                  f"layout says {want}; the rank files do not match layout.json")
        source.read_into(rank, name, full[region] if region else full)  # full[()] of a 0-d array is a copy
        covered += math.prod(want)
    if covered != math.prod(t.shape):
        raise CheckpointError(f"{source.step_dir}: the ranks' pieces of '{name}' cover {covered} of "
                              f"{math.prod(t.shape)} elements")
    return full


def open_step(step_dir: Path) -> tuple[RankSource, dict]:
    """(source, meta) of a complete step directory (legacy one-file steps included)."""
    status = store.check_step(step_dir)
    if not status.complete:
        raise CheckpointError(f"{step_dir} is incomplete: {'; '.join(status.problems)}")
    meta = store.read_json(step_dir / store.META)
    if status.legacy:
        return RankSource(step_dir, _legacy_layout(step_dir), legacy=True), meta
    return RankSource(step_dir, store.read_layout(step_dir)), meta


def _legacy_layout(step_dir: Path) -> CheckpointLayout:
    f = store.legacy_weights(step_dir)
    probe = RankSource(step_dir, CheckpointLayout(), legacy=True)
    try:
        r = probe.reader(0)
        entries = [(n, r.info(n)[1], r.info(n)[0]) for n in r.names()]
    finally:
        probe.close()
    logger.info("%s: one-file checkpoint (%s), read as one rank", step_dir, f.name)
    return build_layout(entries, {})


def write_step(out_root: Path, step: int, target: CheckpointLayout, tensor: Callable[[str], np.ndarray], *,
               meta: dict, config_yaml: str | None, tokenizer_dir: str | None, params: set[str]) -> Path:
    """Write a complete step directory for layout `target`: every rank's file, tensor by tensor
    (`tensor(name)` gives the full array), then the shared files and the manifest."""
    writer = store.StepWriter(out_root, step, 0, target.world_size, target, "safetensors")
    writer.begin()
    ranks = list(range(target.world_size))
    for batch in _batches(ranks, MAX_OPEN_FILES):
        files = {r: writer.rank_tmp(r) for r in batch}
        outs = {r: StreamWriter(files[r] / store.WEIGHT_FILES["safetensors"],
                                [(n, target.tensors[n].dtype, target.tensors[n].local_shape)
                                 for n in target.names_on(r)]) for r in batch}
        try:
            for name in target.tensors:
                holders = [r for r in batch if target.region(r, name) is not None]
                if not holders:
                    continue
                full = tensor(name)
                for r in holders:
                    outs[r].write(name, full[target.region(r, name)])
            for w in outs.values():
                w.close()
        except BaseException:
            for w in outs.values():
                w.abort()
            raise
        for r in batch:
            writer.commit_rank(r, files[r], {store.WEIGHT_FILES["safetensors"]: outs[r].sha256})
    writer.write_shared(meta=meta, config_yaml=config_yaml, tokenizer_dir=tokenizer_dir, params=params)
    writer.write_manifest()
    return writer.step_dir


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _source_entries(layout: CheckpointLayout) -> list[tuple[str, tuple[int, ...], str]]:
    return [(n, t.shape, t.dtype) for n, t in layout.tensors.items()]


def _cached_assembler(source: RankSource) -> Callable[[str], np.ndarray]:
    """`assemble` keeping only the latest tensor (each tensor is asked for once per rank batch)."""
    last: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in last:
            last.clear()
            last[name] = assemble(source, name)
        return last[name]

    return get


def merge(step_dir: Path, out_run_dir: Path) -> Path:
    """One full (single-rank) checkpoint of `step_dir` under `out_run_dir/checkpoints/`."""
    from pangu_ms.checkpoint.training import model_parameter_names

    source, meta = open_step(step_dir)
    try:
        target = build_layout(_source_entries(source.layout), {})
        config = _config_with_mesh(step_dir, dp=1, mp=1, pp=1, optimizer_shard=False)
        return write_step(store.checkpoints_root(out_run_dir), meta["step"], target, _cached_assembler(source),
                          meta=meta, config_yaml=config, tokenizer_dir=_tokenizer_of(step_dir),
                          params=model_parameter_names(source.layout))
    finally:
        source.close()


def reshard(step_dir: Path, target_job, out_run_dir: Path) -> Path:
    """The slices `target_job`'s layout needs (optimizer state included) under `out_run_dir`."""
    from pangu_ms.checkpoint.layout import layout_for, plan_parameters
    from pangu_ms.checkpoint.training import model_parameter_names

    source, meta = open_step(step_dir)
    try:
        params = plan_parameters(target_job.model, target_job.parallel)
        missing = sorted(set(params) - set(source.layout.tensors))
        if missing:
            raise CheckpointError(f"{step_dir} lacks {len(missing)} weight(s) of the target model, e.g. "
                                  f"{', '.join(missing[:3])}: the target config describes another model")
        target = layout_for(target_job.model, target_job.parallel, _source_entries(source.layout))
        return write_step(store.checkpoints_root(out_run_dir), meta["step"], target, _cached_assembler(source),
                          meta=meta, config_yaml=target_job.to_yaml(), tokenizer_dir=_tokenizer_of(step_dir),
                          params=model_parameter_names(target))
    finally:
        source.close()


def _tokenizer_of(step_dir: Path) -> str | None:
    d = step_dir / store.TOKENIZER
    return str(d) if d.is_dir() else None


def _config_with_mesh(step_dir: Path, **mesh) -> str | None:
    """The step's config.yaml with the parallel mesh replaced (None without a config)."""
    from pangu_ms.checkpoint.training import load_job_config

    if not (step_dir / store.CONFIG).is_file():
        return None
    job = load_job_config(step_dir)
    return replace(job, parallel=replace(job.parallel, **mesh)).to_yaml()
