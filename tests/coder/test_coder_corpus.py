"""The code corpus: every filter on hand-made files, the seeded split by file, HumanEval
decontamination checked against a plain reimplementation, and the standard library's counts."""
from __future__ import annotations

import ast
import json
import os
import re
import sysconfig
from pathlib import Path

import pytest

from pangu_ms.config import CodeConfig
from pangu_ms.data.code_corpus import in_heldout, load_code_corpus
from pangu_ms.data.corpora import load_documents
from pangu_ms.data.humaneval import load_humaneval
from pangu_ms.errors import DataError

GOOD = "def double(v):\n    return 2 * v\n"


def _he_solution_file() -> str:
    """A file that pastes HumanEval/0's prompt and canonical solution under another name."""
    p = load_humaneval()[0]
    return (p.prompt + p.canonical_solution).replace("has_close_elements", "near_pairs")


def _write_corpus(root: Path) -> None:
    files = {
        "good.py": GOOD,
        "pkg/also_good.py": "import os\n\n\ndef cwd():\n    return os.getcwd()\n",
        "big.py": "x = 1\n" * 400,                     # 2400 bytes >= max_file_bytes=2000
        "syntax.py": "def f(:\n    pass\n",
        "empty/__init__.py": "\n  \n",
        "wide.py": ("y = '" + "a" * 120 + "'\n") * 2,     # mean line 126 >= 100
        "one_long_line.py": "z = 1\n" * 30 + "w = '" + "b" * 250 + "'\n",  # a line >= 250, mean < 100
        "dup.py": GOOD,
        "he_signature.py": "def has_close_elements(numbers, threshold):\n    return False\n",
        "he_ngram.py": _he_solution_file(),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "latin1.py").write_bytes(b"s = '\xe9'\n")
    (root / "records.jsonl").write_text(json.dumps({"content": "def a():\n    return 1\n"}) + "\n" +
                                        json.dumps({"text": "def b():\n    return 2\n"}) + "\nnot json\n" +
                                        json.dumps({"other": 1}) + "\n", encoding="utf-8")


def test_each_filter_drops_its_file_and_counts_it(tmp_path):
    _write_corpus(tmp_path)
    cfg = CodeConfig(max_file_bytes=2000, max_line_chars=250, heldout_fraction=0.0)
    c = load_code_corpus(f"python:{tmp_path}", cfg, workers=1)
    r = c.report()
    assert r["dropped"] == {"too_large": 1, "undecodable": 1, "unparsable": 1, "empty": 1, "long_mean_line": 1,
                            "long_line": 1, "duplicate": 1, "humaneval_entry_point": 1, "humaneval_ngram": 1,
                            "bad_json": 1, "missing_text_field": 1}
    # dup.py sorts first, so good.py is the duplicate
    assert sorted(f.name for f in c.train) == ["dup.py", "pkg/also_good.py", "records.jsonl:1", "records.jsonl:2"]
    assert [f.text for f in c.train if f.name == "dup.py"] == [GOOD]   # text exactly as stored
    assert r["files_in"] == 13 and r["train_files"] == 4 and r["heldout_files"] == 0
    assert r["dropped_bytes"]["too_large"] == 2400
    by_file = {d["file"]: d for d in r["decontamination"]}
    assert by_file["he_signature.py"]["problems"] == ["HumanEval/0"]
    assert by_file["he_ngram.py"]["reason"] == "humaneval_ngram" and by_file["he_ngram.py"]["problems"] == ["HumanEval/0"]
    assert "good.py" not in by_file  # the duplicate is dropped as a duplicate, before the HumanEval checks


def test_decontamination_can_be_switched_off(tmp_path):
    _write_corpus(tmp_path)
    c = load_code_corpus(f"python:{tmp_path}", CodeConfig(max_file_bytes=2000, max_line_chars=250,
                                                          decontaminate=False, heldout_fraction=0.0), workers=1)
    assert {"he_signature.py", "he_ngram.py"} <= {f.name for f in c.train} and not c.decontamination


def test_split_is_by_file_seeded_and_independent_of_other_files():
    names = [f"mod_{i}.py" for i in range(4000)]
    held = [n for n in names if in_heldout(n, 0, 0.05)]
    assert 120 <= len(held) <= 280  # binomial(4000, 0.05): mean 200, sd 13.8
    assert held == [n for n in names if in_heldout(n, 0, 0.05)]  # deterministic
    assert held != [n for n in names if in_heldout(n, 1, 0.05)]  # the seed matters
    assert all(in_heldout(n, 0, 0.10) for n in held)  # a larger fraction only adds files


def test_missing_user_corpus_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"python:.*nothing_here.*no such file"):
        load_code_corpus(f"python:{tmp_path / 'nothing_here'}")
    with pytest.raises(DataError, match="use 'python_stdlib' or python:"):
        load_code_corpus("stdlib")


def test_load_documents_gives_the_code_training_split(tmp_path):
    _write_corpus(tmp_path)
    docs = load_documents(f"python:{tmp_path / 'good.py'}")
    assert docs == [GOOD]


def _stdlib_files_independently() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("site-packages", "dist-packages")]
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".py")]
    return sorted(out)


@pytest.mark.e2e
def test_stdlib_corpus_accounts_for_every_file(stdlib_corpus):
    r = stdlib_corpus.report()
    every = _stdlib_files_independently()
    assert r["files_in"] == len(every) > 500
    assert r["train_files"] + r["heldout_files"] + sum(r["dropped"].values()) == len(every)
    kept = [f.name for f in stdlib_corpus.train + stdlib_corpus.heldout]
    assert set(kept) <= set(every) and len(kept) == len(set(kept))
    assert not any("site-packages" in n for n in kept)
    assert 0.03 < r["heldout_files"] / len(kept) < 0.07
    for f in stdlib_corpus.train[:200]:  # the filters' promises, checked on the kept text
        lines = f.text.splitlines()
        assert f.text.strip() and max(map(len, lines)) < 1000 and sum(map(len, lines)) / len(lines) < 100
        ast.parse(f.text)


_TOK = re.compile(r"\w+|[^\w\s]")


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    t = _TOK.findall(text)
    return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


def _informative(g) -> bool:
    return len({x for x in g if x[0].isalpha() or x[0] == "_"}) >= 3


@pytest.mark.e2e
def test_decontamination_matches_a_plain_reimplementation(stdlib_corpus):
    """Every file dropped for an n-gram really shares one with HumanEval; sampled kept files share none."""
    he = set()
    for p in load_humaneval():
        he |= {g for g in _ngrams(p.prompt + p.canonical_solution, 20) if _informative(g)}
    root = Path(stdlib_corpus.root)
    dropped = stdlib_corpus.decontamination
    assert dropped, "the standard library shares code with HumanEval on every Python we know of"
    for d in dropped:
        text = (root / d["file"]).read_text(encoding="utf-8")
        assert all(t.startswith("HumanEval/") for t in d["problems"])
        if d["reason"] == "humaneval_ngram":
            assert _ngrams(text, 20) & he, d
        else:
            assert re.search(r"\bdef\s+%s\s*\(" % d["evidence"].split()[1].split("(")[0], text), d
    for f in stdlib_corpus.train[::25]:
        assert not (_ngrams(f.text, 20) & he), f.name
