"""`prepare`: corpora -> clean -> tokenize -> pack -> MindRecord shards + manifest + report.

Layout under `data.output_dir`:
    train/train.mindrecord0..N-1 (+ .db index files), heldout/heldout.mindrecord0..N-1,
    manifest.json (row/token counts, sources, tokenizer checksum, config), report.json
    (cleaning counts per reason) and report.txt (the same for humans).

Code sources (`python_stdlib`, `python:<path>`; PanGu-Coder) skip the Chinese cleaning, whose
CJK-share filter would drop every file: they go through the code corpus filters and its split by
file (`pangu_ms.data.code_corpus`, `code:` section) and need `tokenizer.kind: code`. With
`code.stage: clm` (stage 1) the files are documents like any other. With `code.stage: code_clm`
(stage 2) the rows are the files' docstring-to-function pairs in `code.pair_layout`, each pair
followed by `<eod>` (so attention and positions restart per pair), packed without splitting a pair;
the shards then also hold `loss_mask` float32 [S] (1 where the label is a code token or `<eot>`)
and `pair_id` int32 [S + 1] (index of the pair in its split, -1 on padding).
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

from pangu_ms.config import CodeConfig, DataConfig, JobConfig, SourceConfig, validate_job
from pangu_ms.data.cleaning import CleanStats, Deduplicator, clean_corpus
from pangu_ms.data.code_corpus import CodeCorpus, is_code_corpus, load_code_corpus
from pangu_ms.data.corpora import load_documents, load_texts
from pangu_ms.data.packing import mixing_plan, pack_rows, select_documents, write_shards
from pangu_ms.data.report import build_manifest, build_report, format_report
from pangu_ms.data.shards import DOMAIN_COLUMN, LOSS_MASK_COLUMN, MANIFEST, PAIR_ID_COLUMN, ROW_COLUMN
from pangu_ms.errors import DataError
from pangu_ms.tokenizer import (EOD_ID, MODEL_FILE, PAD_ID, SOURCES, CodeTokenizer, PanguTokenizer, load_tokenizer,
                                resolve_workers, segment_batch, train_code_tokenizer, train_tokenizer)

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
    code: CodeCorpus | None = None
    """a code source's filtered corpus (its files, split by file, and the filter counts)."""


def _load_code(src: SourceConfig, code: CodeConfig, workers: int) -> SourceData:
    """A code source: the code corpus filters and split instead of the Chinese cleaning."""
    corpus = load_code_corpus(src.name, code, workers=workers)
    stats = CleanStats(docs_in=corpus.files_in, chars_in=corpus.bytes_in,
                       docs_kept=len(corpus.train) + len(corpus.heldout),
                       chars_kept=sum(len(f.text) for f in corpus.train + corpus.heldout),
                       dropped=Counter({k: v for k, v in corpus.dropped.items() if k in corpus.dropped_bytes}),
                       dropped_chars=Counter(corpus.dropped_bytes))
    load = Counter(files=corpus.files_in, documents=corpus.files_in)
    load.update({k: v for k, v in corpus.dropped.items() if k not in corpus.dropped_bytes})
    return SourceData(src, load, stats, [f.text for f in corpus.train], [f.text for f in corpus.heldout], corpus)


def _load_and_clean(data: DataConfig, seed: int, progress: bool, code: CodeConfig | None = None) -> list[SourceData]:
    """Load every source, clean it (duplicates checked across sources) and split off held-out docs."""
    dedup = Deduplicator(exact=data.dedup_exact, near_threshold=data.near_dup_threshold)
    out = []
    for i, src in enumerate(data.sources):
        if is_code_corpus(src.name):
            out.append(_load_code(src, code or CodeConfig(), resolve_workers(data.num_workers)))
            continue
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


def _code_tokenizer_for(job: JobConfig, sources: list[SourceData]) -> tuple[CodeTokenizer, bool]:
    """Load the code tokenizer at `tokenizer.path`, or train it there on the code sources' training
    files (`tokenizer.corpus`: `sources`, one source's name, or another code corpus)."""
    path = job.tokenizer.path
    if (Path(path) / MODEL_FILE).is_file():
        tok = load_tokenizer(path)
        if not isinstance(tok, CodeTokenizer):
            raise DataError(f"tokenizer.path={path} holds a PanGu (Chinese) tokenizer but tokenizer.kind=code: "
                            "point tokenizer.path at a code tokenizer or an empty directory to train one")
        return tok, False
    validate_job(job, "prepare")
    names = [s.cfg.name for s in sources]
    corpus = job.tokenizer.corpus
    if corpus == SOURCES:
        texts = [t for s in sources for t in s.train]
    elif corpus in names:
        texts = sources[names.index(corpus)].train
    elif is_code_corpus(corpus):
        texts = [f.text for f in load_code_corpus(corpus, job.code).train]
    else:
        texts = load_texts(corpus)
    logger.info("no %s yet: training a %d-piece code tokenizer on %s", Path(path) / MODEL_FILE,
                job.tokenizer.vocab_size, corpus)
    return train_code_tokenizer(job.tokenizer, path, texts=texts, seed=job.run.seed), True


def _check_kinds(job: JobConfig) -> bool:
    """True for a code job (every source a code corpus, tokenizer.kind code); DataError for a mix."""
    code = [s.name for s in job.data.sources if is_code_corpus(s.name)]
    text = [s.name for s in job.data.sources if not is_code_corpus(s.name)]
    if code and text:
        raise DataError(f"data.sources mixes code corpora {code} with text corpora {text}: one tokenizer "
                        "cannot serve both; prepare them into separate data.output_dir")
    if code and job.tokenizer.kind != "code":
        raise DataError(f"data.sources {code} are code but tokenizer.kind={job.tokenizer.kind}: the PanGu tokenizer "
                        "(jieba, NFKC) does not keep code exact; set tokenizer.kind: code")
    if text and job.tokenizer.kind == "code":
        raise DataError(f"tokenizer.kind=code but data.sources {text} are not code corpora "
                        "(use python_stdlib or python:<path>), or set tokenizer.kind: pangu")
    return bool(code)


def _encode(tok, segmented: list[str], workers: int) -> list[list[int]]:
    if not segmented:
        return []
    if isinstance(tok, CodeTokenizer):
        return tok.encode_batch(segmented, num_workers=workers)
    return tok.sp.encode(segmented, num_threads=workers)


def _pair_rows(tok: CodeTokenizer, files, layout: str, workers: int) -> tuple[list[tuple[list[int], list[bool]]],
                                                                             dict]:
    """Stage-2 rows of `files`: each pair's ids and CODE-CLM targets, then `<eod>` (not a target)."""
    from pangu_ms.data.code_pairs import corpus_pairs, pair_ids

    pairs, counts = corpus_pairs(files, workers=workers)
    rows = []
    for p in pairs:
        ids, target = pair_ids(tok, p, layout)
        rows.append((ids + [EOD_ID], target + [False]))
    return rows, counts


def _stage2_splits(job: JobConfig, tok: CodeTokenizer, sources: list[SourceData], workers: int):
    """(mixing plan, {split: (ids, counts, columns)}, pair counts) for `code.stage: code_clm`."""
    from pangu_ms.data.code_pairs import mask_docstring, pack_pairs

    seq, layout = job.model.seq_length, job.code.pair_layout
    per_source = [_pair_rows(tok, s.code.train, layout, workers) for s in sources]
    held_rows = [r for s in sources for r in _pair_rows(tok, s.code.heldout, layout, workers)[0]]
    ids = [[r[0] for r in rows] for rows, _ in per_source]
    plan = mixing_plan([s.cfg.name for s in sources], [s.cfg.weight for s in sources],
                       [s.cfg.epochs for s in sources], [sum(map(len, x)) for x in ids], [len(x) for x in ids])
    rng = np.random.default_rng(job.run.seed)
    picked = []
    for entry, (rows, _) in zip(plan, per_source):
        picked.extend(rows[i] for i in select_documents([len(r[0]) for r in rows], entry["passes"], rng))
    picked = [picked[i] for i in rng.permutation(len(picked))]
    if job.code.docstring_mask > 0:  # each training instance draws its own positions
        picked = [(mask_docstring(ids_j, job.code.docstring_mask, tok, rng)[0], target) for ids_j, target in picked]
    splits = {}
    for name, rows in (("train", picked), ("heldout", held_rows)):
        if not rows:
            continue
        r, mask, pair, counts = pack_pairs(rows, seq, PAD_ID)
        counts.update(documents=counts["pairs"], stream_tokens=counts["tokens"], tail_tokens_dropped=0,
                      pad_tokens=int((pair < 0).sum()))
        splits[name] = (r, counts, {LOSS_MASK_COLUMN: mask.astype(np.float32), PAIR_ID_COLUMN: pair.astype(np.int32)})
    if "train" not in splits or len(splits["train"][0]) == 0:
        raise DataError(f"code.stage=code_clm: no stage-2 pair of the training files fits a row of "
                        f"model.seq_length+1={seq + 1} ids; raise model.seq_length or add code with docstrings")
    pair_counts = {s.cfg.name: c for s, (_, c) in zip(sources, per_source)}
    # counted in the rows written (a pair too long for a row is dropped with its masked ids)
    splits["train"][1]["docstring_ids_masked"] = int((splits["train"][0] == tok.mask_id).sum())
    return plan, splits, pair_counts


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
    code = _check_kinds(job)
    sources = _load_and_clean(data, job.run.seed, progress, job.code)
    if code:  # code is tokenized as stored: no jieba segmentation
        seg_train, seg_held = [s.train for s in sources], [s.heldout for s in sources]
        tok, trained = _code_tokenizer_for(job, sources)
    else:
        seg_train = [segment_batch(s.train, workers, progress=progress) for s in sources]
        seg_held = [segment_batch(s.heldout, workers) for s in sources]
        tok, trained = _tokenizer_for(job, sources, seg_train, workers)
    if tok.vocab_size > job.model.vocab_size:
        raise DataError(f"tokenizer {job.tokenizer.path} has {tok.vocab_size} pieces but model.vocab_size="
                        f"{job.model.vocab_size}; use a smaller tokenizer or raise model.vocab_size")
    columns: dict[str, dict[str, np.ndarray]] = {}
    pair_counts = None
    if code and job.code.stage == "code_clm":
        plan, staged, pair_counts = _stage2_splits(job, tok, sources, workers)
        splits = {k: (r, c) for k, (r, c, _) in staged.items()}
        columns = {k: cols for k, (_, _, cols) in staged.items()}
    else:
        ids_train = [_encode(tok, s, workers) for s in seg_train]
        ids_held = [_encode(tok, s, workers) for s in seg_held]
        plan, rows, train_counts, row_domains = _train_rows(job, sources, ids_train)
        splits = {"train": (rows, train_counts)}
        if row_domains is not None:
            columns["train"] = {DOMAIN_COLUMN: row_domains}
        held_docs = [d for per_source in ids_held for d in per_source]
        if held_docs:
            domains = _source_domains(job, sources)
            held_domains = [domains[k] for k, per in enumerate(ids_held) for _ in per] if domains else None
            held_rows, held_counts, held_row_domains = _pack_by_domain(held_docs, held_domains,
                                                                       job.model.seq_length, pad_id=PAD_ID)
            splits["heldout"] = (held_rows, held_counts)
            if held_row_domains is not None:
                columns["heldout"] = {DOMAIN_COLUMN: held_row_domains}
    (out / MANIFEST).unlink(missing_ok=True)  # until the new manifest lands, no shard set is "complete"
    if "heldout" not in splits:
        shutil.rmtree(out / "heldout", ignore_errors=True)
    files = {name: write_shards(r, out, name, data.num_shards, columns.get(name)) for name, (r, _) in splits.items()}
    report = build_report(sources, plan, {k: c for k, (_, c) in splits.items()}, time.time() - t0, trained)
    manifest = build_manifest(job, tok, plan, splits, files)
    manifest["columns"] = [ROW_COLUMN] + list(columns.get("train", {}))
    if code:
        manifest["rows"] = "code_pairs" if job.code.stage == "code_clm" else "code_files"
        report["code"] = {s.cfg.name: s.code.report() for s in sources}
        if pair_counts is not None:
            report["code_pairs"] = {"train": pair_counts, "layout": job.code.pair_layout,
                                    "target_tokens": {k: c["target_tokens"] for k, (_, c) in splits.items()}}
    _write_json(out / "report.json", report)
    (out / "report.txt").write_text(format_report(report), encoding="utf-8")
    _write_json(out / MANIFEST, manifest)
    return manifest


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
