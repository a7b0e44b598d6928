"""The code tokenizer: exact round trips (every corpus file, both indentation modes), the id
layout, the INDENT/DEDENT linearisation on a hand-worked example, loading by kind."""
from __future__ import annotations

import json

import pytest

from pangu_ms.config import TokenizerConfig
from pangu_ms.errors import ConfigError, DataError
from pangu_ms.tokenizer import CodeTokenizer, PanguTokenizer, load_tokenizer
from pangu_ms.tokenizer.code import CODE_PIECES, DEDENT_ID, INDENT_ID, escape, unescape

EDGE_CASES = ["", " ", "\n", "   \n", "  x", "\n\n  \n", "x\n", "\tdef f():\n\t\treturn 1\n", "x = 1\r\n  y\r\n",
              "\x0c\n  \x0c x", "a\u2581b\u2583c\ue000d\ue0001\ue0003", "s = '漢字 é ∑ 🙂'\n", "<eod><eot><pad><INDENT>",
              "def f():\n    if x:\n        return 1\n\n  # odd comment\n      y = 2\nz = 3", "    \n\tq", "a\u2582b"]


@pytest.mark.parametrize("mode", ["verbatim", "tokens"])
def test_edge_cases_round_trip(code_tokenizer_dir, mode):
    tok = CodeTokenizer.from_dir(code_tokenizer_dir, indentation=mode)
    for text in EDGE_CASES:
        assert tok.decode(tok.encode(text)) == text, (mode, text)
    assert [tok.decode(i) for i in tok.encode_batch(EDGE_CASES, 2)] == EDGE_CASES


def test_escape_is_a_bijection_on_the_marker_characters():
    for text in EDGE_CASES + ["\ue000", "\ue0000", "\ue000\ue000\u2581"]:
        assert unescape(escape(text)) == text
        assert "\u2581" not in escape(text) and "\u2583" not in escape(text)


def test_id_layout_keeps_the_pangu_ids(code_tokenizer):
    tok = code_tokenizer
    assert [tok.id_to_piece(i) for i in range(14)] == CODE_PIECES
    assert (tok.eod_id, tok.pad_id, tok.eot_id, tok.newline_id) == (8, 6, 9, 3)
    assert CODE_PIECES[:10] == ["<unk>", "<s>", "</s>", "\u2583", "\u2582", "<sep>", "<pad>", "<mask>", "<eod>", "<eot>"]
    ids = tok.encode("<eod> <eot> <pad> <comments> <python> <INDENT> <DEDENT> <sep>")
    assert not set(ids) & set(range(5, 14)) and tok.unk_id not in ids  # text never becomes a control id
    assert tok.encode("a\nb").count(3) == 1


def test_indentation_tokens_on_a_hand_worked_example(code_tokenizer_dir):
    tok = CodeTokenizer.from_dir(code_tokenizer_dir, indentation="tokens")
    src = "def f(x):\n    if x:\n        return 1\n\n    return 2\n"
    ids = tok.encode(src)
    markers = [("NL" if i == 3 else "IN" if i == INDENT_ID else "DE") for i in ids if i in (3, INDENT_ID, DEDENT_ID)]
    # line 2 goes one level in, line 3 one more, the blank line changes nothing, line 5 comes back one
    assert markers == ["NL", "IN", "NL", "IN", "NL", "NL", "DE", "NL"]
    assert not any(tok.id_to_piece(i).startswith("\u2581\u2581") for i in ids)  # no indentation pieces left
    assert tok.decode(ids) == src


def test_encode_split_at_a_line_end(code_tokenizer_dir):
    for mode in ("verbatim", "tokens"):
        tok = CodeTokenizer.from_dir(code_tokenizer_dir, indentation=mode)
        head, tail = tok.encode_split('def f():\n    """Doc."""\n', "    return 1\n")
        assert head + tail == tok.encode('def f():\n    """Doc."""\n    return 1\n')
        assert tok.decode_continuation(head, tail) == "    return 1\n"


def test_directory_format_and_load_by_kind(code_tokenizer_dir, trained_tokenizer, tmp_path):
    info = json.loads((code_tokenizer_dir / "tokenizer.json").read_text())
    assert info["kind"] == "code" and info["indentation"] == "verbatim" and info["normalization"] == "identity"
    assert isinstance(load_tokenizer(code_tokenizer_dir), CodeTokenizer)
    from pangu_ms.tokenizer import save_tokenizer

    save_tokenizer(trained_tokenizer, tmp_path)  # a Chinese tokenizer directory still loads as one
    assert isinstance(load_tokenizer(tmp_path), PanguTokenizer)
    with pytest.raises(DataError, match="expected the code layout"):
        CodeTokenizer.from_dir(tmp_path)


def test_config_requires_identity_normalization_for_code():
    with pytest.raises(ConfigError, match="normalization='nmt_nfkc'.*identity"):
        TokenizerConfig(kind="code")
    with pytest.raises(ConfigError, match="kind='rust'"):
        TokenizerConfig(kind="rust", normalization="identity")
    assert TokenizerConfig(kind="code", normalization="identity", indentation="tokens").indent_unit == 4


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["verbatim", "tokens"])
def test_every_corpus_file_round_trips(stdlib_corpus, code_tokenizer_dir, mode):
    tok = CodeTokenizer.from_dir(code_tokenizer_dir, indentation=mode)
    files = stdlib_corpus.train + stdlib_corpus.heldout
    ids = tok.encode_batch([f.text for f in files], 2)
    bad = [f.name for f, i in zip(files, ids) if tok.decode(i) != f.text]
    assert len(files) > 1000 and not bad, bad[:5]
