"""The PanGu-alpha tokenizer: jieba precise mode, then SentencePiece over the joined words.

Encoding (as released): segment the text with jieba (precise mode, HMM), replace space with
U+2582 and newline with U+2583 inside every segment, join the segments with spaces and encode
with the SentencePiece model. Decoding: SentencePiece decode, drop its spaces, then map
U+2582 -> space and U+2583 -> newline.

Special ids (the released layout, so a released `vocab.model` can be dropped in):
0 `<unk>`, 1 `<s>`, 2 `</s>`, 3 U+2583 (newline), 4 U+2582 (space), 5 `<sep>`, 6 `<pad>`,
7 `<mask>`, 8 `<eod>`, 9 `<eot>`. In the models we train, 5-9 are SentencePiece *control*
symbols: text never produces them, so the literal text "<eod>" encodes to ordinary pieces,
never to id 8 (jieba already splits it into "<", "eod", ">").

Normalisation: models we train use SentencePiece's `nmt_nfkc` rule like the released one
(config `tokenizer.normalization`, or `identity` for exact round trips). NFKC folds:
full-width ASCII forms to ASCII ("，" -> ",", "！" -> "!", "（" -> "(", "Ａ１" -> "A1"),
the ideographic space U+3000 and tabs to whitespace, which the tokenizer then drops
(SentencePiece collapses whitespace, and decoding removes SentencePiece spaces). "。"、"、"、
"《》" and CJK characters are unchanged. Real spaces and newlines survive (they are U+2582/3).

Unseen characters: models we train have `byte_fallback` (UTF-8 byte pieces), so any text
round-trips. A released model without byte fallback maps them to `<unk>` (id 0), which
decodes to "⁇".

A tokenizer directory holds `vocab.model` (and `tokenizer.json` with how it was trained).
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pangu_ms.errors import DataError

logger = logging.getLogger(__name__)

MODEL_FILE = "vocab.model"
INFO_FILE = "tokenizer.json"
SOURCES = "sources"
"""`tokenizer.corpus` value that means: train on the job's data sources (prepare only)."""
SPACE, NEWLINE = "\u2582", "\u2583"
SPECIAL_PIECES = ["<unk>", "<s>", "</s>", NEWLINE, SPACE, "<sep>", "<pad>", "<mask>", "<eod>", "<eot>"]
UNK_ID, BOS_ID, EOS_ID, NEWLINE_ID, SPACE_ID, SEP_ID, PAD_ID, MASK_ID, EOD_ID, EOT_ID = range(10)
_TRANSLATE = str.maketrans({" ": SPACE, "\n": NEWLINE})
_UNTRANSLATE = str.maketrans({" ": None, SPACE: " ", NEWLINE: "\n"})


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the manifest's tokenizer checksum)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_SEGMENTER = None


def segment(text: str) -> str:
    """jieba words of `text` with space/newline mapped to U+2582/U+2583, joined by spaces.

    The SentencePiece input for `text`; it does not depend on the model.
    """
    global _SEGMENTER
    if _SEGMENTER is None:
        from pangu_ms.tokenizer.fast_jieba import FastJieba

        _SEGMENTER = FastJieba(translate=_TRANSLATE)
    # only whitespace segments contain space or newline: FastJieba translates (and caches) them
    return " ".join(_SEGMENTER.cut(text))


def segment_batch(texts: Sequence[str], num_workers: int | None = 1, *, progress: bool = False) -> list[str]:
    """`segment` over many texts, in order, with `num_workers` processes (0: all cores)."""
    return _parallel_map(None, "segment", texts, num_workers, progress)


class PanguTokenizer:
    """jieba + SentencePiece tokenizer with the released PanGu-alpha special ids."""

    def __init__(self, model_proto: bytes, *, source: str = "<memory>") -> None:
        import sentencepiece as spm

        self.model_proto = model_proto
        self.source = source
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        pieces = [self.sp.id_to_piece(i) for i in range(min(10, self.sp.get_piece_size()))]
        if pieces != SPECIAL_PIECES:
            raise DataError(f"{source}: ids 0-9 are {pieces}, expected the PanGu layout {SPECIAL_PIECES}; "
                            "train the model with `python -m pangu_ms tokenizer train` or use a released vocab.model")

    @classmethod
    def from_dir(cls, path: str | Path) -> "PanguTokenizer":
        """Load `<path>/vocab.model` (or `path` itself if it is a .model file)."""
        p = Path(path)
        model = p if p.is_file() else p / MODEL_FILE
        if not model.is_file():
            raise DataError(f"no tokenizer at {model}: train one with `python -m pangu_ms tokenizer train "
                            f"--out {p}` (or `prepare`, which trains it when missing)")
        return cls(model.read_bytes(), source=str(model))

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    eod_id = EOD_ID
    pad_id = PAD_ID
    eot_id = EOT_ID
    unk_id = UNK_ID
    mask_id = MASK_ID

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()

    # ------------------------------------------------------------------ encode / decode
    def segment(self, text: str) -> str:
        """jieba words of `text` with space/newline mapped to U+2582/U+2583, joined by spaces."""
        return segment(text)

    def encode_segmented(self, joined: str | list[str]) -> list[int] | list[list[int]]:
        """SentencePiece ids of `segment()` output (one string or a list, one thread)."""
        if isinstance(joined, str):
            return self.sp.encode(joined)
        return self.sp.encode(joined, num_threads=1)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (no BOS/EOS/EOD added)."""
        return self.sp.encode(self.segment(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control ids (<eod>, <pad>, ...) decode to nothing."""
        return self.sp.decode([int(i) for i in ids]).translate(_UNTRANSLATE)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def encode_batch(self, texts: Sequence[str], num_workers: int = 1, *, progress: bool = False) -> list[list[int]]:
        """`encode` over many texts, in order, with `num_workers` processes (0: all cores)."""
        return _parallel_map(self, "encode_chunk", texts, num_workers, progress)

    def encode_chunk(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encode_segmented([self.segment(t) for t in texts]) if texts else []


# ---------------------------------------------------------------------- worker processes
_WORKER: PanguTokenizer | None = None


def _init_worker(proto: bytes | None) -> None:
    global _WORKER
    _WORKER = PanguTokenizer(proto, source="<worker>") if proto else None


def _run_chunk(args: tuple[str, list[str]]) -> list:
    method, chunk = args
    return _run_chunk_local(_WORKER, method, chunk)


def _chunks(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[i:i + size]) for i in range(0, len(texts), size)]


def resolve_workers(num_workers: int | None) -> int:
    """0 or None means all cores."""
    return max(1, os.cpu_count() or 1) if not num_workers else num_workers


def _parallel_map(tok: PanguTokenizer | None, method: str, texts: Sequence[str], num_workers: int | None,
                  progress: bool) -> list:
    """Apply tokenizer `method` to texts in chunks, in-process or over worker processes."""
    from tqdm import tqdm

    workers = resolve_workers(num_workers)
    chunks = _chunks(texts, 64)
    bar = tqdm(total=len(texts), desc=method.split("_")[0], unit="doc", disable=not progress, leave=False)
    out: list = []
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            out.extend(_run_chunk_local(tok, method, chunk))
            bar.update(len(chunk))
    else:
        # fork is fast and safe before MindSpore starts its threads; spawn otherwise
        ctx = mp.get_context("fork" if "mindspore" not in sys.modules else "spawn")
        if ctx.get_start_method() == "fork":
            segment("")  # build the dictionary tables once; forked workers inherit them
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tok.model_proto if tok else None,)) as pool:
            for res in pool.imap(_run_chunk, [(method, c) for c in chunks]):
                out.extend(res)
                bar.update(len(res))
    bar.close()
    return out


def _run_chunk_local(tok: PanguTokenizer | None, method: str, chunk: list[str]) -> list:
    return [segment(t) for t in chunk] if method == "segment" else tok.encode_chunk(chunk)


def save_tokenizer(tok: PanguTokenizer, out_dir: str | Path, info: dict | None = None) -> Path:
    """Write `vocab.model` (temp file + rename) and `tokenizer.json` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info or {}, sha256=tok.checksum, special_ids=dict(zip(SPECIAL_PIECES, range(10))))
    for name, data in ((INFO_FILE, json.dumps(info, ensure_ascii=False, indent=2).encode()),
                       (MODEL_FILE, tok.model_proto)):
        tmp = out / f".{name}.tmp{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
    return out / MODEL_FILE
