"""The PanGu-Coder tokenizer: SentencePiece over source text, with an exact round trip.

`decode(encode(src)) == src` for every string: whitespace, indentation, tabs, form feeds,
carriage returns and any Unicode character included. How:

- SentencePiece is trained and run with identity normalisation, no dummy prefix, no
  whitespace collapsing, whitespace-only pieces allowed (so runs of indentation spaces become
  single pieces) and byte fallback (any character it has no piece for becomes UTF-8 bytes);
- a newline becomes U+2583, id 3, `<NEW_LINE>`, a piece of its own as in the PanGu-alpha
  tokenizer;
- SentencePiece writes a space as U+2581 and the newline is U+2583, so the text's own U+2581,
  U+2583 and the escape character U+E000 (private use) are escaped first, as U+E000 followed by
  `1`, `3` or `0`; decoding undoes it. Nothing else is rewritten.

Indentation (`tokenizer.indentation`): `verbatim` keeps leading whitespace as pieces;
`tokens` writes each line as `<INDENT>`/`<DEDENT>` ids for the change of its depth (its count of
leading `indent_unit`-space units) followed by the rest of the line, lines joined by
`<NEW_LINE>`; a line of nothing but whitespace is kept as written and changes nothing. Decoding
prefixes each line that holds text with depth x unit spaces, so this mode is exact too.

Ids: 0-9 are the PanGu-alpha layout (`<unk>` `<s>` `</s>` U+2583 U+2582 `<sep>` `<pad>` `<mask>`
`<eod>` `<eot>`), so `<eod>` 8, `<pad>` 6 and `<eot>` 9 mean what the data and the model expect;
then 10 `<comments>`, 11 `<python>` (the stage-2 pair layout), 12 `<INDENT>`, 13 `<DEDENT>`.
5-13 are control ids: no text encodes to them. The directory format is the PanGu tokenizer's
(`vocab.model`, `tokenizer.json` with `"kind": "code"`), so checkpoints carry it the same way.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pangu_ms.errors import DataError
from pangu_ms.tokenizer.tokenizer import (BOS_ID, EOD_ID, EOS_ID, EOT_ID, INFO_FILE, MASK_ID, MODEL_FILE, NEWLINE,
                                          NEWLINE_ID, PAD_ID, SPACE, SPECIAL_PIECES, UNK_ID, PanguTokenizer, save_tokenizer)

logger = logging.getLogger(__name__)

KIND = "code"
CODE_PIECES = SPECIAL_PIECES + ["<comments>", "<python>", "<INDENT>", "<DEDENT>"]
COMMENTS_ID, PYTHON_ID, INDENT_ID, DEDENT_ID = 10, 11, 12, 13
ESCAPE = "\ue000"
SP_SPACE = "\u2581"
_ESCAPES = {"0": ESCAPE, "1": SP_SPACE, "3": NEWLINE}
_UNESCAPE = re.compile(ESCAPE + "([013])")
INDENTATIONS = ("verbatim", "tokens")


def escape(text: str) -> str:
    """`text` with the characters the encoding uses itself (U+E000, U+2581, U+2583) escaped."""
    if ESCAPE in text:
        text = text.replace(ESCAPE, ESCAPE + "0")
    if SP_SPACE in text:
        text = text.replace(SP_SPACE, ESCAPE + "1")
    if NEWLINE in text:
        text = text.replace(NEWLINE, ESCAPE + "3")
    return text


def unescape(text: str) -> str:
    """Inverse of `escape` (a stray U+E000, which only a model can produce, is left as it is)."""
    return _UNESCAPE.sub(lambda m: _ESCAPES[m.group(1)], text) if ESCAPE in text else text


class CodeTokenizer:
    """Exact SentencePiece tokenizer for source code (see the module docstring)."""

    kind = KIND
    eod_id, pad_id, eot_id, unk_id, newline_id, mask_id = EOD_ID, PAD_ID, EOT_ID, UNK_ID, NEWLINE_ID, MASK_ID
    comments_id, python_id, indent_id, dedent_id = COMMENTS_ID, PYTHON_ID, INDENT_ID, DEDENT_ID

    def __init__(self, model_proto: bytes, *, indentation: str = "verbatim", indent_unit: int = 4,
                 source: str = "<memory>") -> None:
        import sentencepiece as spm

        if indentation not in INDENTATIONS:
            raise DataError(f"{source}: indentation={indentation!r}: use one of {', '.join(INDENTATIONS)}")
        self.model_proto, self.source = model_proto, source
        self.indentation, self.unit = indentation, " " * indent_unit
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        pieces = [self.sp.id_to_piece(i) for i in range(min(len(CODE_PIECES), self.sp.get_piece_size()))]
        if pieces != CODE_PIECES:
            raise DataError(f"{source}: ids 0-13 are {pieces}, expected the code layout {CODE_PIECES}; train it with "
                            "`python -m pangu_ms tokenizer train --kind code`")

    @classmethod
    def from_dir(cls, path: str | Path, *, indentation: str | None = None) -> "CodeTokenizer":
        """Load `<path>/vocab.model` with the indentation mode and unit of `<path>/tokenizer.json`."""
        p = Path(path)
        model = p if p.is_file() else p / MODEL_FILE
        if not model.is_file():
            raise DataError(f"no tokenizer at {model}: train one with `python -m pangu_ms tokenizer train --kind code "
                            f"--out {p}`")
        info = read_info(model.parent)
        return cls(model.read_bytes(), indentation=indentation or info.get("indentation", "verbatim"),
                   indent_unit=int(info.get("indent_unit", 4)), source=str(model))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    # ------------------------------------------------------------------ encode
    def encode(self, text: str) -> list[int]:
        """Ids of `text` (no <eod>/<eot> added)."""
        if self.indentation == "verbatim":
            return self.sp.encode(escape(text).replace("\n", NEWLINE))
        return self._encode_lines(text)

    def encode_batch(self, texts: Sequence[str], num_workers: int = 1) -> list[list[int]]:
        """`encode` over many texts, in order (SentencePiece's threads in verbatim mode)."""
        if self.indentation == "verbatim":
            return self.sp.encode([escape(t).replace("\n", NEWLINE) for t in texts], num_threads=max(1, num_workers))
        return [self._encode_lines(t) for t in texts]

    def _split_depth(self, line: str) -> tuple[int | None, str]:
        """(depth, rest) of a line with text; (None, line) for a line of whitespace only."""
        if not line.strip():
            return None, line
        u, k = self.unit, 0
        while line.startswith(u, k * len(u)):
            k += 1
        return k, line[k * len(u):]

    def _encode_lines(self, text: str) -> list[int]:
        depth, markers, contents = 0, [], []
        for line in text.split("\n"):
            k, rest = self._split_depth(line)
            markers.append(0 if k is None else k - depth)
            depth = depth if k is None else k
            contents.append(escape(rest))
        ids: list[int] = []
        for i, (m, piece_ids) in enumerate(zip(markers, self.sp.encode(contents))):
            if i:
                ids.append(NEWLINE_ID)
            ids.extend([INDENT_ID] * m if m > 0 else [DEDENT_ID] * -m)
            ids.extend(piece_ids)
        return ids

    def encode_split(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]:
        """Ids of `prefix + suffix` cut where `prefix` ends: (prefix ids, suffix ids).

        Exact when the prefix ends a line (a newline is a piece of its own); raises otherwise
        if the pieces of the two halves merge across the cut.
        """
        whole, head = self.encode(prefix + suffix), self.encode(prefix)
        if whole[:len(head)] != head:
            raise DataError(f"encode_split: pieces merge across the cut after {prefix[-20:]!r}; cut at a line end")
        return head, whole[len(head):]

    # ------------------------------------------------------------------ decode
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control ids other than the indentation markers decode to nothing."""
        ids = [int(i) for i in ids]
        if self.indentation == "verbatim":
            return unescape(self.sp.decode(ids).replace(NEWLINE, "\n"))
        depth, lines, cur = 0, [], []
        for i in ids + [NEWLINE_ID]:
            if i == NEWLINE_ID:
                text = unescape(self.sp.decode(cur))
                lines.append(self.unit * depth + text if text.strip() else text)
                cur = []
            elif i == INDENT_ID:
                depth += 1
            elif i == DEDENT_ID:
                depth = max(0, depth - 1)
            else:
                cur.append(i)
        return "\n".join(lines)

    def decode_continuation(self, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        """Text that `new_ids` add after `prompt_ids` (in `tokens` mode a line's indentation
        depends on the ids before it, so the two are decoded together)."""
        head = self.decode(prompt_ids)
        whole = self.decode(list(prompt_ids) + list(new_ids))
        return whole[len(head):] if whole.startswith(head) else self.decode(new_ids)


# ---------------------------------------------------------------------- training and loading
def _training_lines(texts: Iterable[str]) -> Iterable[str]:
    """One SentencePiece sentence per non-blank source line (the newline is a piece of its own)."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield escape(line)


def train_code_tokenizer(cfg, out_dir: str | Path, *, texts: Sequence[str], seed: int = 0) -> CodeTokenizer:
    """Train the code tokenizer on source texts and write `<out_dir>/vocab.model` + tokenizer.json.

    `cfg` is a `TokenizerConfig` with `kind: code` (vocab_size, model_type, character_coverage,
    max_sentences, indentation, indent_unit). Raises DataError for no text or a vocabulary the
    text cannot support.
    """
    import sentencepiece as spm

    from pangu_ms.tokenizer.train import _fix_special_layout, _training_error

    if not cfg.byte_fallback:
        raise DataError("tokenizer.byte_fallback=false: the code tokenizer needs byte fallback for an exact round trip")
    lines = list(_training_lines(texts))
    if not lines:
        raise DataError(f"code tokenizer corpus {cfg.corpus!r} has no text to train on")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, character_coverage=cfg.character_coverage, byte_fallback=True,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=False, input_sentence_size=cfg.max_sentences,
            shuffle_input_sentence=True, max_sentence_length=1 << 16, unk_id=UNK_ID, bos_id=BOS_ID,
            eos_id=EOS_ID, pad_id=-1, user_defined_symbols=[NEWLINE, SPACE], hard_vocab_limit=True,
            control_symbols=["<sep>", "<pad>", "<mask>", "<eod>", "<eot>"] + CODE_PIECES[10:],
            num_threads=max(1, os.cpu_count() or 1), minloglevel=2)
    except RuntimeError as exc:
        raise _training_error(exc, cfg.vocab_size) from None
    proto = _order_code_pieces(_fix_special_layout(model.getvalue()))
    tok = CodeTokenizer(proto, indentation=cfg.indentation, indent_unit=cfg.indent_unit,
                        source=str(Path(out_dir) / MODEL_FILE))
    save_tokenizer(tok, out_dir, info={
        "kind": KIND, "vocab_size": tok.vocab_size, "model_type": cfg.model_type, "normalization": "identity",
        "byte_fallback": True, "character_coverage": cfg.character_coverage, "corpus": cfg.corpus,
        "indentation": cfg.indentation, "indent_unit": cfg.indent_unit, "sentences": len(lines), "seed": seed,
        "code_ids": {p: i for i, p in enumerate(CODE_PIECES) if i >= 10}})
    logger.info("trained code tokenizer: %d pieces from %d lines -> %s", tok.vocab_size, len(lines), out_dir)
    return tok


def _order_code_pieces(proto: bytes) -> bytes:
    """Move `<comments>`, `<python>`, `<INDENT>`, `<DEDENT>` to ids 10-13 (after the PanGu 0-9)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(proto)
    by_piece = {p.piece: p for p in model.pieces}
    head = [by_piece[name] for name in CODE_PIECES]
    rest = [p for p in model.pieces if p.piece not in CODE_PIECES]
    copies = [type(p)() for p in head + rest]
    for dst, src in zip(copies, head + rest):
        dst.CopyFrom(src)
    del model.pieces[:]
    model.pieces.extend(copies)
    return model.SerializeToString()


def read_info(path: str | Path) -> dict:
    """`tokenizer.json` of a tokenizer directory ({} when there is none)."""
    f = Path(path) / INFO_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{f}: unreadable tokenizer description ({exc}); retrain the tokenizer") from None


def load_tokenizer(path: str | Path) -> PanguTokenizer | CodeTokenizer:
    """The tokenizer of a directory, by the `kind` its tokenizer.json records (PanGu if none)."""
    p = Path(path)
    kind = read_info(p if p.is_dir() else p.parent).get("kind", "pangu")
    return CodeTokenizer.from_dir(p) if kind == KIND else PanguTokenizer.from_dir(p)
