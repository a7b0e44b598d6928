"""PanguTokenizer: special ids, round trips, NFKC folding, batch workers, jieba exactness, errors."""
from __future__ import annotations

import io
import json
import unicodedata

import jieba
import pytest

from pangu_ms.config import TokenizerConfig
from pangu_ms.tokenizer.fast_jieba import FastJieba
from pangu_ms.errors import DataError
from pangu_ms.tokenizer import SPECIAL_PIECES, PanguTokenizer, segment_batch, train_tokenizer

ROUND_TRIP = [
    "中国人民决心继承邓小平同志的遗志。",
    "第一行\n第二行\n\n空行之后",
    "有 空格 的 句子  两个空格",
    "ASCII words: Hello World 2024, pi=3.14159",
    "混合English和中文123个字",
    "从未见过的字 龘𠀀 emoji 😀 ü ß",  # unseen characters: byte fallback
]


def test_special_id_layout(trained_tokenizer):
    tok = trained_tokenizer
    assert [tok.id_to_piece(i) for i in range(10)] == SPECIAL_PIECES
    assert (tok.eod_id, tok.pad_id, tok.vocab_size) == (8, 6, 2000)
    assert tok.encode("\n") == [3] or 3 in tok.encode("甲\n乙")
    assert 4 in tok.encode("甲 乙")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(trained_tokenizer, text):
    ids = trained_tokenizer.encode(text)
    assert 0 not in ids  # no <unk>: byte fallback covers unseen characters
    assert trained_tokenizer.decode(ids) == text


def test_literal_special_text_is_not_a_control_id(trained_tokenizer):
    tok = trained_tokenizer
    for text in ["<eod>", "文本<eod>文本", "<pad><sep><mask><eot></s><s>"]:
        ids = tok.encode(text)
        assert not set(ids) & {1, 2, 5, 6, 7, 8, 9}
        assert tok.decode(ids) == text
    assert tok.decode(tok.encode("甲") + [8] + tok.encode("乙")) == "甲乙"  # control ids decode to nothing


def test_nfkc_folding_documented(trained_tokenizer):
    tok = trained_tokenizer
    # full-width ASCII forms fold to ASCII; 。、《》 stay; tab and U+3000 vanish
    assert tok.decode(tok.encode("你好，世界！（ＡＢＣ１２３）")) == "你好,世界!(ABC123)"
    assert tok.decode(tok.encode("《人民日报》说：好。")) == "《人民日报》说:好。"
    assert tok.decode(tok.encode("甲\t乙\u3000丙")) == "甲乙丙"


def test_identity_normalisation_keeps_full_width(tmp_path):
    cfg = TokenizerConfig(vocab_size=280, character_coverage=0.99, normalization="identity")
    tok = train_tokenizer(cfg, tmp_path, segmented=segment_batch(["你好，世界！（ＡＢＣ）\t。"] * 50))
    assert tok.decode(tok.encode("你好，世界！（ＡＢＣ）")) == "你好，世界！（ＡＢＣ）"


def test_ids_equal_upstream_loop(trained_tokenizer, pd_docs):
    """Same ids as the released code: jieba.cut, translate, join, sp.encode."""
    tok = trained_tokenizer
    trans = str.maketrans(" \n", "\u2582\u2583")
    for text in pd_docs[60:80] + ROUND_TRIP:
        upstream = tok.sp.encode(" ".join(w.translate(trans) for w in jieba.cut(text, cut_all=False)))
        assert tok.encode(text) == upstream


def test_fast_jieba_is_exact(pd_docs):
    fast = FastJieba()
    texts = pd_docs[100:200] + ROUND_TRIP + ["", " ", "\r\n", "北京大学生前来应聘", "3.5%的增长 a.b-c_d"]
    for text in texts:
        assert fast.cut(text) == list(jieba.cut(text)), text[:40]


def test_fast_hmm_is_exact(pd_docs):
    import random

    import jieba.finalseg

    from pangu_ms.tokenizer.fast_jieba import hmm_cut

    chars = "".join(pd_docs[:50]) + "ＡＢ12ab．％"
    rng = random.Random(0)
    for _ in range(3000):
        n = rng.randint(1, 14)
        start = rng.randrange(len(chars) - n)
        text = chars[start:start + n]
        assert hmm_cut(text) == list(jieba.finalseg.cut(text)), text


def test_encode_batch_workers_match(trained_tokenizer, pd_docs):
    texts = pd_docs[:70] + ROUND_TRIP * 20
    one = trained_tokenizer.encode_batch(texts, num_workers=1)
    assert one == [trained_tokenizer.encode(t) for t in texts]
    assert trained_tokenizer.encode_batch(texts, num_workers=2) == one


def test_released_format_model_loads(tmp_path, pd_docs):
    """A vocab.model written by plain SentencePiece with the released layout (no byte fallback)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(segment_batch(pd_docs[:20])), model_writer=model, vocab_size=1200,
        character_coverage=0.99, user_defined_symbols=SPECIAL_PIECES[3:], pad_id=-1, minloglevel=2)
    (tmp_path / "vocab.model").write_bytes(model.getvalue())
    tok = PanguTokenizer.from_dir(tmp_path)
    assert tok.decode(tok.encode("中国人民\n新年")) == "中国人民\n新年"
    assert 8 not in tok.encode("<eod>")  # jieba splits it before SentencePiece sees it
    assert tok.encode("龘")[-1] == 0  # no byte fallback: unseen characters become <unk>
    assert tok.decode(tok.encode("中国龘")) == "中国⁇"


def test_errors(tmp_path, pd_docs):
    with pytest.raises(DataError, match="no tokenizer"):
        PanguTokenizer.from_dir(tmp_path / "missing")
    with pytest.raises(DataError, match="too large for this corpus"):
        train_tokenizer(TokenizerConfig(vocab_size=50000), tmp_path / "big", segmented=segment_batch(pd_docs[:3]))
    assert not (tmp_path / "big" / "vocab.model").exists()
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(TokenizerConfig(), tmp_path / "empty", segmented=["", "   "])
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c"] * 20), model_writer=model, vocab_size=8,
                                   minloglevel=2)
    with pytest.raises(DataError, match="PanGu layout"):
        PanguTokenizer(model.getvalue())


def test_cli_encode_decode(trained_tokenizer, tmp_path, monkeypatch, capsys):
    from pangu_ms.cli import main
    from pangu_ms.tokenizer import save_tokenizer

    save_tokenizer(trained_tokenizer, tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("中国 人民\n<eod>\n"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x) for x in lines] == [trained_tokenizer.encode("中国 人民"), trained_tokenizer.encode("<eod>")]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["中国 人民", "<eod>"]


def test_cli_train_bpe(tmp_path, pd_docs, capsys):
    from pangu_ms.cli import main

    corpus = tmp_path / "news.txt"
    corpus.write_text("\n\n".join(pd_docs[:15]), encoding="utf-8")
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "1200", "--model-type", "bpe",
                 "--character-coverage", "0.98", "--workers", "1", "--out", str(tmp_path / "bpe")]) == 0
    assert "1200 pieces (bpe) from 15 documents" in capsys.readouterr().out
    tok = PanguTokenizer.from_dir(tmp_path / "bpe")
    assert json.loads((tmp_path / "bpe" / "tokenizer.json").read_text())["model_type"] == "bpe"
    text = pd_docs[20][:300]
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFKC", text)  # NFKC: "１２月，" -> "12月,"
    assert main(["tokenizer", "train", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")]) == 2


def test_sources_corpus_outside_prepare_is_refused(tmp_path, capsys):
    from pangu_ms.cli import main
    from pangu_ms.data.corpora import load_documents

    with pytest.raises(DataError, match="only works in `prepare`"):
        load_documents("sources")
    assert main(["tokenizer", "train", "--corpus", "sources", "--out", str(tmp_path / "tok")]) == 2
    assert "only works in `prepare`" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()
