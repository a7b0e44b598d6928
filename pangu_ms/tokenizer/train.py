"""Training a PanGu tokenizer: SentencePiece over jieba-segmented documents.

The caller loads and segments the documents (`pangu_ms.data` knows the corpora; this
package does not), so the same segmented text can serve prepare's corpus and the tokenizer.
The trained model's ids 0-9 are reordered into the released layout (`SPECIAL_PIECES`).
"""
from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pangu_ms.errors import DataError
from pangu_ms.tokenizer.tokenizer import (BOS_ID, EOS_ID, MODEL_FILE, NEWLINE, PAD_ID, SPACE, SPECIAL_PIECES, UNK_ID,
                                          PanguTokenizer, save_tokenizer)

logger = logging.getLogger(__name__)

def _fix_special_layout(proto: bytes) -> bytes:
    """Reorder the meta pieces SentencePiece wrote into the released id layout 0-9."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(proto)
    by_piece = {p.piece: p for p in model.pieces}
    ordered = [by_piece[name] for name in SPECIAL_PIECES]
    rest = [p for p in model.pieces if p.piece not in SPECIAL_PIECES]
    copies = [type(p)() for p in ordered + rest]
    for dst, src in zip(copies, ordered + rest):
        dst.CopyFrom(src)
    del model.pieces[:]
    model.pieces.extend(copies)
    model.trainer_spec.pad_id = PAD_ID
    model.trainer_spec.pad_piece = "<pad>"
    return model.SerializeToString()


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _training_error(exc: RuntimeError, vocab_size: int) -> DataError:
    msg = str(exc)
    if m := _TOO_HIGH.search(msg):
        return DataError(f"tokenizer.vocab_size={vocab_size} is too large for this corpus: it supports at most "
                         f"{m.group(2)} pieces; lower tokenizer.vocab_size or train on more text")
    if m := _TOO_SMALL.search(msg):
        return DataError(f"tokenizer.vocab_size={vocab_size} is smaller than the {m.group(2)} characters and "
                         "special pieces the corpus needs; raise tokenizer.vocab_size or lower "
                         "tokenizer.character_coverage")
    return DataError(f"SentencePiece training failed: {msg.splitlines()[-1] if msg else exc!r}")


def _training_sentences(segmented: Iterable[str]) -> Iterable[str]:
    """Paragraph-sized training sentences out of segmented documents."""
    sep = f" {NEWLINE} "
    for doc in segmented:
        for para in doc.split(sep):
            para = para.strip()
            if para and para != NEWLINE:
                yield para


def train_tokenizer(cfg, out_dir: str | Path, *, segmented: Sequence[str], seed: int = 0) -> PanguTokenizer:
    """Train a SentencePiece model over jieba-segmented documents and write `<out_dir>/vocab.model`.

    Args:
        cfg: a `TokenizerConfig` (vocab_size, model_type, byte_fallback, character_coverage,
            max_sentences, normalization; `corpus` is only recorded in tokenizer.json).
        segmented: `segment_batch()` output of the training documents.
        seed: SentencePiece's sampling seed (same inputs and seed give the same model).
    Raises DataError for an empty corpus or a vocabulary size the corpus cannot support.
    """
    import sentencepiece as spm

    sentences = list(_training_sentences(segmented))
    if not sentences:
        raise DataError(f"tokenizer corpus {cfg.corpus!r} has no text to train on")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            byte_fallback=cfg.byte_fallback, normalization_rule_name=cfg.normalization,
            input_sentence_size=cfg.max_sentences, shuffle_input_sentence=True,
            max_sentence_length=1 << 16, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
            control_symbols=["<sep>", "<pad>", "<mask>", "<eod>", "<eot>"],
            user_defined_symbols=[NEWLINE, SPACE], hard_vocab_limit=True,
            num_threads=max(1, os.cpu_count() or 1), minloglevel=2)
    except RuntimeError as exc:
        raise _training_error(exc, cfg.vocab_size) from None
    tok = PanguTokenizer(_fix_special_layout(model.getvalue()), source=str(Path(out_dir) / MODEL_FILE))
    save_tokenizer(tok, out_dir, info={
        "vocab_size": tok.vocab_size, "model_type": cfg.model_type, "normalization": cfg.normalization,
        "byte_fallback": cfg.byte_fallback, "character_coverage": cfg.character_coverage,
        "corpus": cfg.corpus, "sentences": len(sentences), "seed": seed})
    logger.info("trained %s tokenizer: %d pieces from %d sentences -> %s", cfg.model_type, tok.vocab_size,
                len(sentences), out_dir)
    return tok


