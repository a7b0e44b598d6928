"""Fuzzing the tokenizer (hypothesis): arbitrary Unicode through encode/decode, arbitrary ids
through decode, arbitrary bytes through the CLI's stdin.

What holds for any text: encoding never fails and gives ids in the vocabulary; decoding any
ids never fails; encode(decode(encode(t))) is encode(t) up to one more pass (decoding is
stable). Exact round trips: with the released normalisation (NFKC) for any text that NFKC
leaves unchanged and that has no control characters but newline; with `identity`
normalisation for any text. In both cases except the two marker characters U+2582/U+2583,
which stand for space and newline in the released scheme and decode as such. Bug found:
invalid UTF-8 on `tokenizer encode`'s stdin ended in a pybind11 RuntimeError traceback
(fixed in pangu_ms/cli/tokenizer.py: one `error: stdin line N: not valid UTF-8 ...` line).
"""
from __future__ import annotations

import contextlib
import io
import json
import unicodedata
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pangu_ms.config import TokenizerConfig
from pangu_ms.tokenizer import segment_batch, train_tokenizer

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
MARKERS = ("\u2582", "\u2583")  # space and newline in the released scheme


@pytest.fixture(scope="module")
def identity_tokenizer(tmp_path_factory, pd_docs):
    out = tmp_path_factory.mktemp("tok_identity")
    cfg = TokenizerConfig(path=str(out), vocab_size=2000, character_coverage=0.99, normalization="identity")
    return train_tokenizer(cfg, out, segmented=segment_batch(pd_docs[:60], 1))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, trained_tokenizer):
    from pangu_ms.tokenizer import save_tokenizer

    out = tmp_path_factory.mktemp("tok_cli")
    save_tokenizer(trained_tokenizer, out)
    return out


def _nfkc_stable(text: str) -> bool:
    return (unicodedata.normalize("NFKC", text) == text and all(c.isprintable() or c == "\n" for c in text)
            and not any(m in text for m in MARKERS))


@FUZZ
@given(text=st.text(max_size=40))
@example(text="从未见过的字 龘𠀀 emoji 😀\n\n  ")
def test_any_text_encodes_in_the_vocabulary_and_decodes_stably(trained_tokenizer, text):
    tok = trained_tokenizer
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    back = tok.decode(ids)
    assert tok.decode(tok.encode(back)) == back  # what comes back is a fixed point
    if _nfkc_stable(text):
        assert back == text


@FUZZ
@given(text=st.text(max_size=40))
def test_identity_normalisation_round_trips_any_text(identity_tokenizer, text):
    assume(not any(m in text for m in MARKERS))
    assert identity_tokenizer.decode(identity_tokenizer.encode(text)) == text


@FUZZ
@given(ids=st.lists(st.integers(0, 1999), max_size=30))
def test_any_ids_decode(trained_tokenizer, ids):
    text = trained_tokenizer.decode(ids)
    assert isinstance(text, str)
    text.encode("utf-8")  # valid Unicode (byte pieces that form no character become U+FFFD)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _cli(argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    from pangu_ms.cli import main

    out, err = io.StringIO(), io.StringIO()
    real = __import__("sys").stdin
    __import__("sys").stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="surrogateescape")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        __import__("sys").stdin = real
    return rc, out.getvalue(), err.getvalue()


@settings(max_examples=150, deadline=timedelta(seconds=5), suppress_health_check=list(HealthCheck))
@given(blob=st.one_of(st.binary(max_size=40), st.text(max_size=30).map(str.encode),
                      st.lists(st.sampled_from([b"\xff", b"\xe4\xb8", "中国".encode(), b"\n", b"\r\n", b"[1, 2]", b"x"]),
                               max_size=6).map(b"".join)),
       command=st.sampled_from(["encode", "decode"]))
def test_cli_stdin_of_any_bytes_is_handled_or_one_error_line(tokenizer_dir, trained_tokenizer, blob, command):
    rc, out, err = _cli(["tokenizer", command, "--tokenizer", str(tokenizer_dir)], blob)
    lines = blob.split(b"\n")
    try:
        text_lines = [x.decode("utf-8") for x in lines]
    except UnicodeDecodeError:
        text_lines = None
    if rc != 0:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: stdin line "), err
        if text_lines is not None:
            assert "not valid UTF-8" not in err
        elif "not valid UTF-8" not in err:  # another line's problem came first (decode: not an id list)
            first_bad = next(n for n, x in enumerate(lines, 1) if not _utf8(x))
            assert int(err.split()[3].rstrip(":")) < first_bad, err
        return
    assert text_lines is not None, "invalid UTF-8 was accepted"
    if command == "encode":  # one JSON id list per input line, the library's ids
        got = [json.loads(x) for x in out.splitlines()]
        pieces = blob.decode().split("\n")  # lines end at newline only (not at VT, FF, U+2028, ...)
        pieces = pieces[:-1] if pieces[-1] == "" else pieces
        want = [trained_tokenizer.encode(x.removesuffix("\r")) for x in pieces]
        assert got == want


def test_invalid_utf8_on_encode_stdin_is_one_error_line(tokenizer_dir):
    rc, out, err = _cli(["tokenizer", "encode", "--tokenizer", str(tokenizer_dir)], "中国\n".encode() + b"\xff\xfe bad\n")
    assert rc == 2 and len(out.splitlines()) == 1  # the good first line was encoded
    assert err.strip() == ("error: stdin line 2: not valid UTF-8 (byte 0xff at column 1): the tokenizer reads UTF-8 "
                           "text; convert the input first, e.g. `iconv -f GB18030 -t UTF-8`")
