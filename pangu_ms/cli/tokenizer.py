"""`python -m pangu_ms tokenizer train|encode|decode`: train and debug the PanGu tokenizer.

`--kind code` trains the PanGu-Coder tokenizer (exact round trip of source code) on a code
corpus (`python_stdlib` or `python:<path>`, its training split); encode/decode pick the kind
the tokenizer directory records."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tokenizer", help="train a tokenizer, encode/decode text (debugging)",
                              description="Train a jieba+SentencePiece tokenizer, or encode/decode stdin.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="<train|encode|decode>", required=True)

    t = sub.add_parser("train", help="train a SentencePiece model over jieba-segmented text (or code)")
    t.add_argument("--kind", choices=("pangu", "code"), default="pangu",
                   help="pangu: jieba + SentencePiece (Chinese); code: the exact PanGu-Coder tokenizer")
    t.add_argument("--corpus", default=None,
                   help="built-in corpus (peoples_daily_1998, shopping_reviews; code: python_stdlib) or a "
                        ".txt/.jsonl file, dir or glob (code: python:<path>)")
    t.add_argument("--indentation", choices=("verbatim", "tokens"), default="verbatim",
                   help="code: indentation as pieces, or as <INDENT>/<DEDENT> ids")
    t.add_argument("--vocab-size", type=int, default=8000, help="pieces in the vocabulary (default 8000)")
    t.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="SentencePiece algorithm")
    t.add_argument("--normalization", choices=("nmt_nfkc", "identity"), default="nmt_nfkc",
                   help="nmt_nfkc as released (folds full-width forms) or identity (exact round trips)")
    t.add_argument("--no-byte-fallback", action="store_true", help="map unseen characters to <unk>")
    t.add_argument("--character-coverage", type=float, default=0.9995)
    t.add_argument("--text-field", default="text", help="JSON field holding the text in .jsonl files")
    t.add_argument("--workers", type=int, default=0, help="jieba processes (0: all cores)")
    t.add_argument("--out", required=True, help="tokenizer directory to write (vocab.model, tokenizer.json)")

    for name, helptext in (("encode", "text lines on stdin -> one JSON list of ids per line"),
                           ("decode", "JSON id lists on stdin -> one text line each (newlines as \\n)")):
        e = sub.add_parser(name, help=helptext, description=helptext)
        e.add_argument("--tokenizer", required=True, help="tokenizer directory (holds vocab.model)")
        if name == "encode":
            e.add_argument("--pieces", action="store_true", help="also print the pieces of each line")
    p.set_defaults(func=run)
    return p


def _train(args) -> int:
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.data.corpora import load_documents
    from pangu_ms.tokenizer import segment_batch, train_tokenizer

    if args.kind == "code":
        return _train_code(args)
    args.corpus = args.corpus or "peoples_daily_1998"
    cfg = TokenizerConfig(path=args.out, vocab_size=args.vocab_size, model_type=args.model_type,
                          corpus=args.corpus, byte_fallback=not args.no_byte_fallback,
                          character_coverage=args.character_coverage, normalization=args.normalization)
    docs = load_documents(args.corpus, text_field=args.text_field)
    segmented = segment_batch(docs, args.workers, progress=sys.stderr.isatty())
    tok = train_tokenizer(cfg, args.out, segmented=segmented)
    print(f"tokenizer: {tok.vocab_size} pieces ({args.model_type}) from {len(docs)} documents -> {args.out}/vocab.model")
    return 0


def _train_code(args) -> int:
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.data.code_corpus import load_code_corpus
    from pangu_ms.tokenizer import train_code_tokenizer

    corpus = args.corpus or "python_stdlib"
    cfg = TokenizerConfig(kind="code", path=args.out, vocab_size=args.vocab_size, model_type=args.model_type,
                          corpus=corpus, normalization="identity", byte_fallback=not args.no_byte_fallback,
                          character_coverage=args.character_coverage, indentation=args.indentation)
    files = load_code_corpus(corpus, workers=args.workers).train
    tok = train_code_tokenizer(cfg, args.out, texts=[f.text for f in files])
    print(f"code tokenizer: {tok.vocab_size} pieces ({args.model_type}, indentation {args.indentation}) from "
          f"{len(files)} files -> {args.out}/vocab.model")
    return 0


def _stdin_lines():
    """(line number, text) of each stdin line, decoded as UTF-8 strictly: invalid bytes are a
    DataError naming the line and the byte, not a traceback from the SentencePiece binding."""
    from pangu_ms.errors import DataError

    binary = getattr(sys.stdin, "buffer", None)
    for n, raw in enumerate(binary if binary is not None else sys.stdin, 1):
        try:
            if isinstance(raw, bytes):
                text = raw.decode("utf-8")
            else:  # a text stream: lone surrogates stand for undecodable bytes
                text = raw
                raw.encode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError) as exc:
            bad = exc.object[exc.start]
            shown = f"byte 0x{bad:02x}" if isinstance(bad, int) else f"{bad!r}"
            raise DataError(f"stdin line {n}: not valid UTF-8 ({shown} at column {exc.start + 1}): the tokenizer "
                            "reads UTF-8 text; convert the input first, e.g. `iconv -f GB18030 -t UTF-8`") from None
        yield n, text.rstrip("\r\n") if text.endswith("\r\n") else text.rstrip("\n")


def _encode(args) -> int:
    from pangu_ms.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    for _, line in _stdin_lines():
        ids = tok.encode(line)
        print(json.dumps(ids))
        if args.pieces:
            print(json.dumps([tok.id_to_piece(i) for i in ids], ensure_ascii=False))
    return 0


def _decode(args) -> int:
    from pangu_ms.errors import DataError
    from pangu_ms.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    for n, line in _stdin_lines():
        if not line.strip():
            continue
        try:
            ids = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"stdin line {n}: not a JSON list of ids: {line.strip()[:60]!r}") from None
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids):
            raise DataError(f"stdin line {n}: expected a JSON list of ids in [0, {tok.vocab_size})")
        print(tok.decode(ids).replace("\n", "\\n"))
    return 0


def run(args) -> int:
    return {"train": _train, "encode": _encode, "decode": _decode}[args.tokenizer_command](args)
