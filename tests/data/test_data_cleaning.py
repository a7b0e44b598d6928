"""Cleaning filters, length split, exact and near-duplicate detection."""
from __future__ import annotations

from collections import Counter

from pangu_ms.config import DataConfig
from pangu_ms.data.cleaning import (CleanStats, Deduplicator, cjk_ratio, clean_corpus, filter_document,
                                    remove_noise, split_long)

BODY = "中国人民决心继承邓小平同志的遗志，继续把建设有中国特色社会主义事业推向前进。"


def test_noise_filters_each_counted():
    edits = Counter()
    text = ("标题\x00\x07\u200b\r\n<p>正文<b>加粗</b>&nbsp;</p>访问https://example.com/a?b=1或www.abc.cn，"
            "邮件a.b@x.org。好！！！！！！！！！！！！！！  \n\n\n结尾")
    out = remove_noise(text, max_char_repeat=10, edits=edits)
    assert out == "标题\n正文加粗访问或，邮件。好！\n结尾"
    assert edits == Counter(control_chars=1, markup=1, urls=1, repeats_squeezed=1)
    assert remove_noise("好！！！！！！！！！！", 10) == "好！！！！！！！！！！"  # a run of exactly 10 is kept


def test_cjk_share_and_length_filters():
    cfg = DataConfig(min_chars=20, max_chars=100, min_cjk_ratio=0.5)
    assert cjk_ratio("中文 ab") == 0.5 and cjk_ratio("") == 0.0
    stats = CleanStats()
    assert filter_document("English only text that is long enough to pass the length filter", cfg, stats) == []
    assert filter_document("太短了", cfg, stats) == []
    assert filter_document("\x00 <br/> ", cfg, stats) == []
    assert filter_document(BODY, cfg, stats) == [BODY]
    assert stats.dropped == Counter(low_cjk=1, too_short=1, empty=1)
    assert stats.dropped_chars["too_short"] == 3


def test_long_documents_split_at_paragraphs():
    paras = [BODY * 2, BODY, "短段落。", BODY * 5]  # the last paragraph alone exceeds max_chars
    text = "\n".join(paras)
    pieces = split_long(text, 120)
    assert all(len(p) <= 120 for p in pieces)
    assert "".join(p.replace("\n", "") for p in pieces) == text.replace("\n", "")
    first = pieces[0].split("\n")
    assert first == paras[:len(first)] and len(first) >= 2  # whole paragraphs stay together when they fit
    stats = CleanStats()
    kept = filter_document(text, DataConfig(min_chars=10, max_chars=120), stats)
    assert len(kept) == len(pieces) and stats.edits["split_docs"] == 1


def test_planted_duplicates_found(pd_docs):
    docs = [d for d in pd_docs[:40] if len(d) > 200]
    exact = " " + docs[3].replace("，", "， ") + "\n"  # differs from docs[3] in whitespace only
    near = docs[5][:50] + "甲" + docs[5][51:120] + "乙" + docs[5][121:]  # two characters changed
    stats = CleanStats()
    kept = clean_corpus(docs + [exact, near], DataConfig(), stats, Deduplicator(near_threshold=0.8))
    assert kept == docs
    assert stats.dropped == Counter(exact_duplicate=1, near_duplicate=1)


def test_near_dup_threshold_and_disable():
    a = BODY * 3
    b = a.replace("继承", "继续", 1)
    assert Deduplicator(near_threshold=0.8).check(a) is None
    d = Deduplicator(near_threshold=0.8)
    d.check(a)
    assert d.check(b) == "near_duplicate"
    off = Deduplicator(near_threshold=1.0)
    off.check(a)
    assert off.check(b) is None and off.check(a) == "exact_duplicate"
    no_exact = Deduplicator(exact=False, near_threshold=1.0)
    no_exact.check(a)
    assert no_exact.check(a) is None


def test_cleaning_is_deterministic(pd_docs):
    runs = []
    for _ in range(2):
        stats = CleanStats()
        kept = clean_corpus(pd_docs[:80] + pd_docs[:10], DataConfig(), stats, Deduplicator())
        runs.append((kept, stats.to_dict()))
    assert runs[0] == runs[1]
    assert runs[0][1]["dropped"]["exact_duplicate"] >= 10 - runs[0][1]["dropped"].get("too_short", 0)
