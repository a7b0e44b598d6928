"""Stage-2 pairs: exact source cuts on a hand-built file, the skip reasons, the CODE-CLM loss
mask on hand-built rows, packing, and the standard library's pair counts."""
from __future__ import annotations

import ast
import textwrap
from collections import Counter

import numpy as np
import pytest

from pangu_ms.data.code_pairs import corpus_pairs, extract_pairs, loss_mask, pack_pairs, pair_ids

SOURCE = '''import os


class Box:
    @property
    def size(self) -> int:
        """How big.

        In bytes.
        """
        # a comment the pair keeps
        return self._n   # and this one

    def stub(self):
        """Only a docstring."""

    def later(self):
        """Not yet."""
        raise NotImplementedError("later")

    def shares(self):
        """Doc."""  # a comment on the docstring's line
        return 1

    def text_at_col0(self):
        """Has a string reaching column 0."""
        return """
x"""


def top(a, b=1):
    \'\'\'Add two numbers.\'\'\'
    def inner(c):
        "Nested."
        return c
    return inner(a) + b


def oneline(): "Doc on the def line."; return 2
'''


def test_pairs_are_exact_cuts_of_the_source():
    stats = Counter()
    pairs = {p.name: p for p in extract_pairs(SOURCE, "box.py", stats)}
    assert sorted(pairs) == ["inner", "size", "top"]
    size = pairs["size"]
    assert size.docstring == "How big.\n\nIn bytes."
    assert size.prompt == '@property\ndef size(self) -> int:\n    """How big.\n\n    In bytes.\n    """\n'
    assert size.body == "    # a comment the pair keeps\n    return self._n   # and this one\n"
    assert size.code == "@property\ndef size(self) -> int:\n" + size.body
    top = pairs["top"]
    assert top.code == 'def top(a, b=1):\n    def inner(c):\n        "Nested."\n        return c\n    return inner(a) + b\n'
    assert pairs["inner"].code == "def inner(c):\n    return c\n" and pairs["inner"].docstring == "Nested."
    method = SOURCE[SOURCE.index("    @property"):SOURCE.index("\n\n    def stub")] + "\n"
    assert size.prompt + size.body == textwrap.dedent(method)
    for p in pairs.values():
        ast.parse(p.code)
    assert stats == Counter(functions=8, with_docstring=8, pairs=3, docstring_only=1, stub_body=1,
                            docstring_shares_line=2, not_dedentable=1)


def test_line_endings_and_tabs_are_kept():
    src = "class K:\r\n\tdef m(self):\r\n\t\t'''Tab doc.'''\r\n\t\treturn 1\r\n"
    (p,) = extract_pairs(src)
    assert p.code == "def m(self):\r\n\treturn 1\r\n" and p.prompt == "def m(self):\r\n\t'''Tab doc.'''\r\n"


class CharTok:
    """A hand-checkable tokenizer: one id per character (100 + its code point)."""

    comments_id, python_id, eot_id, mask_id = 10, 11, 9, 7

    def encode(self, text):
        return [100 + ord(c) for c in text]

    def encode_split(self, a, b):
        return self.encode(a), self.encode(b)


def test_code_clm_mask_on_hand_built_rows():
    from pangu_ms.data.code_pairs import CodePair

    pair = CodePair("f.py", "f", 1, docstring="ab", code="xyz", prompt="P", body="QR")
    ids, target = pair_ids(CharTok(), pair, "tagged")
    a, b, x, y, z = (100 + ord(c) for c in "abxyz")
    assert ids == [10, a, b, 11, x, y, z, 9]
    # labels are ids[1:] = a b <python> x y z <eot>: only x y z <eot> are trained on
    assert loss_mask(target).tolist() == [0, 0, 0, 1, 1, 1, 1]
    ids, target = pair_ids(CharTok(), pair, "inline")
    assert ids == [100 + ord("P"), 100 + ord("Q"), 100 + ord("R"), 9]
    assert loss_mask(target).tolist() == [1, 1, 1]  # labels Q R <eot>; the prompt is input only


def test_docstring_masking_on_a_hand_built_pair():
    from pangu_ms.data.code_pairs import CodePair, mask_docstring

    pair = CodePair("f.py", "f", 1, docstring="abcdefghijklmnopqrst", code="xyz", prompt="P", body="QR")
    ids, target = pair_ids(CharTok(), pair, "tagged")
    out, k = mask_docstring(ids, 0.15, CharTok(), np.random.default_rng(0))
    changed = [i for i, (u, v) in enumerate(zip(ids, out)) if u != v]
    assert k == 3 and len(changed) == 3  # 15% of 20 docstring ids
    assert all(1 <= i <= 20 and out[i] == 7 for i in changed)  # only docstring ids, now <mask>
    assert out[0] == 10 and out[21:] == ids[21:]  # <comments>, <python>, the code and <eot> untouched
    other, _ = mask_docstring(ids, 0.15, CharTok(), np.random.default_rng(1))
    assert other != out  # positions are drawn, not fixed
    assert mask_docstring(ids, 0.0, CharTok(), np.random.default_rng(0)) == (ids, 0)


def test_mask_with_the_real_tokenizer_covers_exactly_the_code(code_tokenizer):
    (pair,) = [p for p in extract_pairs(SOURCE, "box.py") if p.name == "size"]
    ids, target = pair_ids(code_tokenizer, pair, "tagged")
    mask = loss_mask(target)
    labels = np.array(ids[1:])
    assert labels[mask == 1][-1] == code_tokenizer.eot_id
    assert code_tokenizer.decode(labels[mask == 1][:-1]) == pair.code
    assert code_tokenizer.decode(labels[mask == 0]) == pair.docstring  # <python> decodes to nothing
    ids, target = pair_ids(code_tokenizer, pair, "inline")
    labels, mask = np.array(ids[1:]), loss_mask(target)
    assert code_tokenizer.decode(labels[mask == 1][:-1]) == pair.body
    assert code_tokenizer.decode(ids) == pair.prompt + pair.body


def test_packing_keeps_pairs_whole_and_the_mask_aligned():
    rows = [([10, 1, 11, 2, 3, 9], [False, False, False, True, True, True]),
            ([10, 4, 11, 5, 9], [False, False, False, True, True]),
            ([10] + [7] * 20 + [9], [False] * 21 + [True]),  # longer than a row: dropped
            ([10, 6, 11, 8, 9], [False, False, False, True, True])]
    ids, mask, docs, counts = pack_pairs(rows, seq_length=11, pad_id=6)
    assert ids.tolist() == [[10, 1, 11, 2, 3, 9, 10, 4, 11, 5, 9, 6], [10, 6, 11, 8, 9] + [6] * 7]
    assert mask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0], [0, 0, 1, 1] + [0] * 7]
    assert docs.tolist() == [[0] * 6 + [1] * 5 + [-1], [3] * 5 + [-1] * 7]
    assert counts == {"pairs": 3, "too_long": 1, "rows": 2, "target_tokens": 7, "tokens": 16}


@pytest.mark.e2e
def test_stdlib_pairs_counts_and_reconstruction(stdlib_corpus):
    files = stdlib_corpus.train[::4]  # a quarter keeps the check meaningful at a quarter of the parse time
    pairs, counts = corpus_pairs(files)
    assert counts["files"] == len(files) and counts["pairs"] == len(pairs) > 1000
    assert counts["with_docstring"] == counts["pairs"] + sum(counts["skipped"].values())
    by_file = {f.name: f.text for f in files}
    trees: dict[str, ast.Module] = {}
    for p in pairs[::50]:
        ast.parse(p.code)
        # an independent cut: the function's lines from its node, dedented by its def's indentation
        if p.file not in trees:
            trees[p.file] = ast.parse(by_file[p.file])
        tree = trees[p.file]
        node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and n.lineno == p.lineno and n.name == p.name)
        start = node.decorator_list[0] if node.decorator_list else node
        lines = by_file[p.file].splitlines(keepends=True)
        seg = lines[start.lineno - 1:node.end_lineno]
        def_line = lines[node.lineno - 1]
        indent = def_line[:len(def_line) - len(def_line.lstrip())]
        expected = "".join(line[len(indent):] if line.startswith(indent) else line for line in seg)
        assert p.prompt + p.body == expected
