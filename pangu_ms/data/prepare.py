"""`prepare`: corpora -> clean -> tokenize -> pack -> MindRecord shards + manifest + report.

Layout under `data.output_dir`:
    train/train.mindrecord0..N-1 (+ .db index files), heldout/heldout.mindrecord0..N-1,
    manifest.json (row/token counts, sources, tokenizer checksum, config), report.json
    (cleaning counts per reason) and report.txt (the same for humans).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pangu_ms.config import DataConfig, JobConfig, SourceConfig, validate_job
from pangu_ms.data.cleaning import CleanStats, Deduplicator, clean_corpus
from pangu_ms.data.corpora import load_documents, load_texts
from pangu_ms.data.packing import mixing_plan, pack_rows, select_documents, write_shards
from pangu_ms.data.report import build_manifest, build_report, format_report
from pangu_ms.data.shards import MANIFEST
from pangu_ms.errors import DataError
from pangu_ms.tokenizer import (EOD_ID, MODEL_FILE, PAD_ID, SOURCES, PanguTokenizer, resolve_workers, segment_batch,
                                train_tokenizer)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- prepare
@dataclass
class SourceData:
    """One source after loading and cleaning, split by document into train and held-out."""

    cfg: SourceConfig
    load: Counter
    clean: CleanStats
    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)


def _load_and_clean(data: DataConfig, seed: int, progress: bool) -> list[SourceData]:
    """Load every source, clean it (duplicates checked across sources) and split off held-out docs."""
    dedup = Deduplicator(exact=data.dedup_exact, near_threshold=data.near_dup_threshold)
    out = []
    for i, src in enumerate(data.sources):
        load = Counter()
        docs = load_documents(src.name, text_field=src.text_field, stats=load)
        stats = CleanStats()
        kept = clean_corpus(tqdm(docs, desc=f"clean {src.name}", unit="doc", disable=not progress,
                                 leave=False), data, stats, dedup)
        if not kept:
            raise DataError(f"source {src.name!r}: all {len(docs)} documents were dropped by cleaning "
                            f"({dict(stats.dropped)}); check the corpus or relax data.min_chars / "
                            "data.min_cjk_ratio / data.near_dup_threshold")
        n_held = 0
        if data.heldout_fraction > 0 and len(kept) >= 2:
            n_held = min(len(kept) - 1, max(1, round(data.heldout_fraction * len(kept))))
        held = set(np.random.default_rng([seed, i]).choice(len(kept), n_held, replace=False).tolist())
        out.append(SourceData(src, load, stats, [d for j, d in enumerate(kept) if j not in held],
                              [d for j, d in enumerate(kept) if j in held]))
    return out


def _tokenizer_for(job: JobConfig, sources: list[SourceData], segmented: list[list[str]],
                   workers: int) -> tuple[PanguTokenizer, bool]:
    """Load `tokenizer.path`, or train it there first (on the cleaned corpus when it is a source,
    on every source's cleaned training documents when `tokenizer.corpus` is `sources`)."""
    model = Path(job.tokenizer.path) / MODEL_FILE
    if model.is_file():
        tok = PanguTokenizer.from_dir(job.tokenizer.path)
        if tok.vocab_size != job.tokenizer.vocab_size:
            logger.warning("using the existing %s (%d pieces, not tokenizer.vocab_size=%d); delete it to retrain",
                           model, tok.vocab_size, job.tokenizer.vocab_size)
        return tok, False
    validate_job(job, "prepare")
    names = [s.cfg.name for s in sources]
    if job.tokenizer.corpus == SOURCES:
        text = [doc for docs in segmented for doc in docs]
    elif job.tokenizer.corpus in names:
        text = segmented[names.index(job.tokenizer.corpus)]
    else:
        text = segment_batch(load_texts(job.tokenizer.corpus), workers)
    logger.info("no %s yet: training a %d-piece tokenizer on %s", model, job.tokenizer.vocab_size,
                job.tokenizer.corpus)
    return train_tokenizer(job.tokenizer, job.tokenizer.path, segmented=text, seed=job.run.seed), True


def _encode(tok: PanguTokenizer, segmented: list[str], workers: int) -> list[list[int]]:
    return tok.sp.encode(segmented, num_threads=workers) if segmented else []


def _source_domains(job: JobConfig, sources: list[SourceData]) -> list[int] | None:
    """PanGu-Sigma: each source's domain id (`experts.domains` order); None for a dense job."""
    if job.experts is None:
        return None
    return [job.experts.domain_id(s.cfg.domain) for s in sources]  # validate_job checked the names


def _pack_by_domain(docs: list[list[int]], doc_domains: list[int] | None, seq_length: int, **kw):
    """pack_rows over all documents, or (PanGu-Sigma) per domain so that no row mixes domains:
    (rows, counts, row domain ids or None)."""
    if doc_domains is None:
        return (*pack_rows(docs, seq_length, EOD_ID, **kw), None)
    parts, totals, dom = [], {}, []
    for d in sorted(set(doc_domains)):
        rows, counts = pack_rows([x for x, k in zip(docs, doc_domains) if k == d], seq_length, EOD_ID, **kw)
        parts.append(rows)
        dom.append(np.full(len(rows), d, np.int32))
        totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
    return np.concatenate(parts), totals, np.concatenate(dom)


def _train_rows(job: JobConfig, sources: list[SourceData], ids: list[list[list[int]]]):
    """Mixing plan, document order and packed training rows (and PanGu-Sigma's row domains)."""
    plan = mixing_plan([s.cfg.name for s in sources], [s.cfg.weight for s in sources],
                       [s.cfg.epochs for s in sources], [sum(map(len, x)) for x in ids], [len(x) for x in ids])
    rng = np.random.default_rng(job.run.seed)
    picked: list[list[int]] = []
    picked_domain: list[int] = []
    domains = _source_domains(job, sources)
    for k, (entry, doc_ids) in enumerate(zip(plan, ids)):
        chosen = select_documents([len(d) for d in doc_ids], entry["passes"], rng)
        picked.extend(doc_ids[i] for i in chosen)
        picked_domain.extend([domains[k] if domains else 0] * len(chosen))
    order = rng.permutation(len(picked))
    rows, counts, row_domains = _pack_by_domain([picked[i] for i in order],
                                                [picked_domain[i] for i in order] if domains else None,
                                                job.model.seq_length)
    if len(rows) == 0:
        raise DataError(f"the training data gives {counts['stream_tokens']} tokens, fewer than one row of "
                        f"model.seq_length+1={job.model.seq_length + 1}; lower model.seq_length or add data")
    return plan, rows, counts, row_domains


def prepare(job: JobConfig, *, progress: bool = False) -> dict:
    """Clean, tokenize, mix and pack `job.data.sources` into MindRecord shards; returns the manifest."""
    t0 = time.time()
    if job.experts is not None:  # each source's domain, before the cleaning work
        validate_job(job, "prepare")
    data, out = job.data, Path(job.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = resolve_workers(data.num_workers)
    sources = _load_and_clean(data, job.run.seed, progress)
    seg_train = [segment_batch(s.train, workers, progress=progress) for s in sources]
    seg_held = [segment_batch(s.heldout, workers) for s in sources]
    tok, trained = _tokenizer_for(job, sources, seg_train, workers)
    if tok.vocab_size > job.model.vocab_size:
        raise DataError(f"tokenizer {job.tokenizer.path} has {tok.vocab_size} pieces but model.vocab_size="
                        f"{job.model.vocab_size}; use a smaller tokenizer or raise model.vocab_size")
    ids_train = [_encode(tok, s, workers) for s in seg_train]
    ids_held = [_encode(tok, s, workers) for s in seg_held]
    plan, rows, train_counts, row_domains = _train_rows(job, sources, ids_train)
    (out / MANIFEST).unlink(missing_ok=True)  # until the new manifest lands, no shard set is "complete"
    splits = {"train": (rows, train_counts)}
    split_domains = {"train": row_domains}
    held_docs = [d for per_source in ids_held for d in per_source]
    if held_docs:
        domains = _source_domains(job, sources)
        held_domains = [domains[k] for k, per in enumerate(ids_held) for _ in per] if domains else None
        held_rows, held_counts, split_domains["heldout"] = _pack_by_domain(held_docs, held_domains,
                                                                           job.model.seq_length, pad_id=PAD_ID)
        splits["heldout"] = (held_rows, held_counts)
    else:
        shutil.rmtree(out / "heldout", ignore_errors=True)
    files = {name: write_shards(r, out, name, data.num_shards, split_domains[name])
             for name, (r, _) in splits.items()}
    report = build_report(sources, plan, {k: c for k, (_, c) in splits.items()}, time.time() - t0, trained)
    manifest = build_manifest(job, tok, plan, splits, files)
    _write_json(out / "report.json", report)
    (out / "report.txt").write_text(format_report(report), encoding="utf-8")
    _write_json(out / MANIFEST, manifest)
    return manifest


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
