"""Fuzzing the corpus readers (hypothesis): .txt and .jsonl files of arbitrary bytes, directories
of them, and the strict JSON-lines reader.

What holds for any input: load_documents returns non-empty, stripped documents that are valid
Unicode (they reach the SentencePiece binding, which fails on anything else), or raises one
single-line DataError; every skipped entry is counted. Where the input is well formed, the
documents are exactly those a reference split (written here) finds.

Bugs found and fixed (pangu_ms/data/corpora.py): a JSON line whose text held an unpaired
surrogate escape ("\\ud800") was accepted and broke tokenizer training later with a
UnicodeEncodeError; it is now counted as undecodable (read_json_lines: a DataError naming the
line). A line nested a few thousand levels deep ended in RecursionError; now bad_json (strict
reader: a DataError naming the line).
"""
from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pangu_ms.data.corpora import load_documents, read_json_lines
from pangu_ms.errors import DataError

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
SKIPS = ("undecodable", "bad_json", "missing_text_field")


def load(path: Path, **kw) -> tuple[list[str] | None, Counter]:
    stats = Counter()
    try:
        docs = load_documents(str(path), stats=stats, **kw)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return None, stats
    for d in docs:
        assert d and d == d.strip() and isinstance(d, str)
        d.encode("utf-8")  # valid Unicode
    return docs, stats


def txt_reference(text: str) -> list[str]:
    docs = [c.strip() for c in re.split(r"\r?\n[ \t\r\f\v]*\r?\n", text)]
    return [d.replace("\r\n", "\n") for d in docs if d]


@FUZZ
@given(blob=st.binary(max_size=120) | st.lists(st.sampled_from([b"\n", b"\r\n", b"  \n", "文本".encode(), b"\xff",
                                                                  b"ab", b"\t", b"\x00"]), max_size=12).map(b"".join))
def test_txt_of_any_bytes(blob):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.txt"
        p.write_bytes(blob)
        docs, stats = load(p)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        assert stats["undecodable"] > 0
        return
    want = txt_reference(text)
    assert docs == (want or None) and stats["undecodable"] == 0


jsonl_line = st.one_of(
    st.builds(lambda t: json.dumps({"text": t}).encode(), st.text(max_size=12)),
    st.builds(lambda t: json.dumps({"text": t}, ensure_ascii=False).encode(), st.text(max_size=12)),
    st.just(b'{"text": "\\ud800 lone"}'), st.just(b'{"text": "\\udc00\\ud800"}'),
    st.just(b"[" * 2000 + b"]" * 2000), st.just(b'{"other": "x"}'), st.just(b'{"text": 3}'),
    st.binary(max_size=16), st.text(max_size=12).map(str.encode))


def jsonl_reference(line: bytes) -> tuple[str, str | None]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "undecodable", None
    except (ValueError, RecursionError):
        return "bad_json", None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return "missing_text_field", None
    try:
        obj["text"].encode("utf-8")
    except UnicodeEncodeError:
        return "undecodable", None
    return "ok", obj["text"].strip() or None


@FUZZ
@given(lines=st.lists(jsonl_line, max_size=8))
@example(lines=[b'{"text": "\\ud800 lone"}', b'{"text": "kept"}'])
@example(lines=[b"[" * 2000 + b"]" * 2000, b'{"text": "kept"}'])
def test_jsonl_of_any_lines(lines):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.jsonl"
        p.write_bytes(b"\n".join(lines))
        docs, stats = load(p)
    kinds = [jsonl_reference(x) for x in b"\n".join(lines).splitlines() if x.strip()]
    want = [t for k, t in kinds if k == "ok" and t]
    assert docs == (want or None)
    for k in SKIPS:
        assert stats[k] == sum(kind == k for kind, _ in kinds), k


@FUZZ
@given(files=st.dictionaries(st.from_regex(r"[a-z]{1,3}(/[a-z]{1,3})?\.(txt|jsonl|md)", fullmatch=True),
                             st.text(max_size=20), min_size=1, max_size=5))
def test_directory_reads_its_txt_and_jsonl_files_in_sorted_order(files):
    with tempfile.TemporaryDirectory() as d:
        for name, text in files.items():
            (Path(d) / name).parent.mkdir(parents=True, exist_ok=True)
            body = "\n".join(json.dumps({"text": x}) for x in text.split("\n")) if name.endswith(".jsonl") else text
            (Path(d) / name).write_text(body, encoding="utf-8")
        docs, stats = load(Path(d))
    want = []
    read = sorted(Path(d) / n for n in files if not n.endswith(".md"))  # Path order: component-wise
    for path in read:
        text = files[str(path.relative_to(d))]
        want += ([x.strip() for x in text.split("\n") if x.strip()] if path.suffix == ".jsonl"
                 else txt_reference(text))
    assert stats["files"] == len(read)
    assert docs == (want or None)


@FUZZ
@given(lines=st.lists(jsonl_line, max_size=6))
def test_strict_json_lines_reader_gives_values_or_one_error_naming_the_line(lines):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.jsonl"
        p.write_bytes(b"\n".join(lines))
        try:
            got = read_json_lines(p, "test file")
        except DataError as exc:
            assert "\n" not in str(exc) and re.search(rf"{re.escape(str(p))}(:\d+)?", str(exc)), exc
            return
    for _, value in got:
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # every string is Unicode text


@pytest.mark.parametrize("line", [b'{"text": "\\ud800"}', b"[" * 100_000 + b"]" * 100_000],
                         ids=["lone_surrogate", "deep_nesting"])
def test_strict_reader_names_the_line_of_a_lone_surrogate_or_deep_nesting(tmp_path, line):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"ok": 1}\n' + line + b"\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(p))}:2: "):
        read_json_lines(p, "test file")
