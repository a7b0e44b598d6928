"""The prepare report (JSON and a human summary) and the shard manifest."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

SKIP_REASONS = ("undecodable", "bad_json", "missing_text_field")


def build_report(sources, plan: list[dict], packing: dict[str, dict], wall_seconds: float,
                 tokenizer_trained: bool = False) -> dict:
    """Counts per source and in total: loaded, skipped, kept and dropped per reason, packing."""
    per_source, dropped, dropped_chars, skipped, edits = {}, Counter(), Counter(), Counter(), Counter()
    totals = Counter()
    for s in sources:
        clean = s.clean.to_dict()
        skips = {k: s.load[k] for k in SKIP_REASONS if s.load[k]}
        per_source[s.cfg.name] = {"files": s.load["files"], "documents_loaded": s.load["documents"],
                                  "skipped": skips, "clean": clean, "train_docs": len(s.train),
                                  "heldout_docs": len(s.heldout)}
        dropped.update(s.clean.dropped)
        dropped_chars.update(s.clean.dropped_chars)
        skipped.update(skips)
        edits.update(s.clean.edits)
        totals.update({"docs_in": clean["docs_in"], "chars_in": clean["chars_in"], "docs_kept": clean["docs_kept"],
                       "chars_kept": clean["chars_kept"], "train_docs": len(s.train), "heldout_docs": len(s.heldout)})
    return {"total": {**dict(totals), "skipped": dict(skipped), "dropped": dict(sorted(dropped.items())),
                      "dropped_chars": dict(sorted(dropped_chars.items())), "edits": dict(sorted(edits.items()))},
            "sources": per_source, "mixing_plan": plan, "packing": packing,
            "tokenizer_trained": tokenizer_trained, "wall_seconds": round(wall_seconds, 2)}


def format_plan(plan: list[dict]) -> str:
    """The mixing plan as an aligned table."""
    lines = [f"{'source':<28} {'share':>6} {'docs':>8} {'tokens':>12} {'cap':>5} {'passes':>7} {'planned':>12}"]
    for p in plan:
        lines.append(f"{p['source'][:28]:<28} {p['weight_share']:>6.3f} {p['docs']:>8} {p['tokens_available']:>12,} "
                     f"{p['epochs_cap']:>5g} {p['passes']:>7.3f} {p['tokens_planned']:>12,}")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """Human summary of `build_report` output."""
    t = report["total"]
    lines = ["# pangu_ms prepare report", "",
             f"documents in: {t['docs_in']:,} ({t['chars_in']:,} characters)",
             f"kept: {t['docs_kept']:,} documents ({t['chars_kept']:,} characters): "
             f"{t['train_docs']:,} train, {t['heldout_docs']:,} held-out"]
    if t["skipped"]:
        lines.append("skipped while reading: " + ", ".join(f"{k} {v:,}" for k, v in t["skipped"].items()))
    lines.append("dropped: " + (", ".join(f"{k} {v:,} docs / {t['dropped_chars'][k]:,} chars"
                                           for k, v in t["dropped"].items()) or "none"))
    lines.append("edited: " + (", ".join(f"{k} {v:,}" for k, v in t["edits"].items()) or "none"))
    for name, s in report["sources"].items():
        c = s["clean"]
        lines.append(f"  {name}: {c['docs_in']:,} in, {c['docs_kept']:,} kept, dropped {c['dropped'] or 'none'}")
    lines += ["", "mixing plan:", format_plan(report["mixing_plan"]), ""]
    for split, p in report["packing"].items():
        lines.append(f"{split}: {p['rows']:,} rows from {p['documents']:,} documents, {p['stream_tokens']:,} tokens "
                     f"(tail dropped {p['tail_tokens_dropped']:,}, pad {p['pad_tokens']:,})")
    lines.append(f"wall time: {report['wall_seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def build_manifest(job, tok, plan: list[dict], splits: dict, files: dict[str, list[str]]) -> dict:
    """What the shards hold and how they were made (no timestamps: same inputs, same manifest)."""
    out = Path(job.data.output_dir)
    split_info = {}
    for name, (rows, counts) in splits.items():
        split_info[name] = {"files": [str(Path(f).relative_to(out)) for f in files[name]],
                            "rows": int(len(rows)), "label_tokens": int(rows.shape[0] * (rows.shape[1] - 1)),
                            **counts}
    return {"format": "pangu_ms.prepare/1", "seq_length": job.model.seq_length,
            "row_length": job.model.seq_length + 1, "eod_id": tok.eod_id, "pad_id": tok.pad_id,
            "splits": split_info, "sources": plan,
            "tokenizer": {"path": job.tokenizer.path, "sha256": tok.checksum, "vocab_size": tok.vocab_size,
                          "kind": getattr(tok, "kind", "pangu")},
            "config": {"seed": job.run.seed, "model": {"seq_length": job.model.seq_length},
                       "tokenizer": dataclasses.asdict(job.tokenizer), "data": dataclasses.asdict(job.data)}}
