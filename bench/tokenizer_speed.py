"""Tokenizer throughput: pangu_ms vs the upstream loop, same text, same ids.

Prints JSON lines (one per measurement, then a summary):
- `upstream_loop`: the released approach, a Python loop of `jieba.cut` then `sp.encode` per text;
- `pangu_ms_1proc`: `PanguTokenizer.encode_batch(texts, num_workers=1)` (exact fast jieba with
  block caches, batched SentencePiece, one thread);
- `pangu_ms_all_cores`: the same with one worker process per core (pool start-up included).
Segmentation caches start cold in every measurement. The summary checks that all three give
identical ids and reports the speed-ups.

    python bench/tokenizer_speed.py                            # People's Daily, tokenizer of the tiny config
    python bench/tokenizer_speed.py --max-chars 50000 --repeat 1   # smoke run
"""
from __future__ import annotations

import os
import sys

# this file is named like the stdlib module `tokenize`: keep its directory off the import path

import argparse
import json
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="peoples_daily_1998", help="built-in corpus or .txt/.jsonl path")
    p.add_argument("--tokenizer", default="runs/tiny/tokenizer",
                   help="tokenizer dir; trained (8000 pieces) on --corpus if it has no vocab.model")
    p.add_argument("--max-chars", type=int, default=0, help="use only the first documents up to this many chars")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per implementation (best is reported)")
    p.add_argument("--workers", type=int, default=0, help="processes for the all-cores run (0: all cores)")
    return p.parse_args(argv)


def load_texts(corpus: str, max_chars: int) -> list[str]:
    from pangu_ms.data.corpora import load_texts as load

    texts, total = [], 0
    for t in load(corpus):
        if max_chars and total >= max_chars:
            break
        texts.append(t)
        total += len(t)
    return texts


def get_tokenizer(path: str, texts: list[str]):
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.tokenizer import MODEL_FILE, PanguTokenizer, segment_batch, train_tokenizer

    if (Path(path) / MODEL_FILE).is_file():
        return PanguTokenizer.from_dir(path)
    cfg = TokenizerConfig(path=path, vocab_size=8000, character_coverage=0.9995)
    return train_tokenizer(cfg, path, segmented=segment_batch(texts, 0))


def upstream_loop(sp, texts: list[str]) -> list[list[int]]:
    """The released JIEBATokenizer.tokenize + sp.encode, one text at a time."""
    import jieba

    trans = str.maketrans(" \n", "\u2582\u2583")
    out = []
    for text in texts:
        seg_list = [x.translate(trans) for x in jieba.cut(text, cut_all=False)]
        out.append(sp.encode(" ".join(seg_list)))
    return out


def cold_segmenter() -> None:
    """Start pangu_ms segmentation with empty caches (dictionary tables prebuilt, not timed)."""
    import pangu_ms.tokenizer.tokenizer as tokmod
    from pangu_ms.tokenizer.fast_jieba import FastJieba

    tokmod._SEGMENTER = FastJieba(translate=tokmod._TRANSLATE)


def timed(fn, repeat: int, before=None):
    best, result = float("inf"), None
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()
    texts = load_texts(args.corpus, args.max_chars)
    tok = get_tokenizer(args.tokenizer, texts)
    chars = sum(map(len, texts))
    workers = args.workers or os.cpu_count() or 1
    runs = {
        "upstream_loop": (1, lambda: upstream_loop(tok.sp, texts), None),
        "pangu_ms_1proc": (1, lambda: tok.encode_batch(texts, num_workers=1), cold_segmenter),
        "pangu_ms_all_cores": (workers, lambda: tok.encode_batch(texts, num_workers=workers), cold_segmenter),
    }
    speed, ids = {}, {}
    for name, (procs, fn, before) in runs.items():
        seconds, ids[name] = timed(fn, args.repeat, before)
        speed[name] = chars / seconds
        print(json.dumps({"bench": "tokenize", "impl": name, "processes": procs, "docs": len(texts),
                          "chars": chars, "seconds": round(seconds, 4), "chars_per_s": round(speed[name])}))
    identical = ids["upstream_loop"] == ids["pangu_ms_1proc"] == ids["pangu_ms_all_cores"]
    print(json.dumps({"bench": "tokenize", "summary": True, "corpus": args.corpus, "cores": os.cpu_count(),
                      "tokens": sum(map(len, ids["upstream_loop"])), "ids_identical": identical,
                      "speedup_1proc": round(speed["pangu_ms_1proc"] / speed["upstream_loop"], 2),
                      "speedup_all_cores": round(speed["pangu_ms_all_cores"] / speed["upstream_loop"], 2)}))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
