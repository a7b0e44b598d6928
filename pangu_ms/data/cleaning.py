"""Cleaning as the PanGu papers describe it, deterministic, with counts for every decision.

Per document, in order:
1. noise filters (the text is edited, the document kept): control and zero-width characters,
   markup (HTML/XML tags and entities), URLs and e-mail addresses, runs of one character
   longer than `max_char_repeat` (squeezed to one), blank lines and trailing spaces;
2. drops: `empty` after step 1, `low_cjk` (share of CJK characters among non-space
   characters below `min_cjk_ratio`), `too_short` (fewer than `min_chars` characters);
3. documents longer than `max_chars` are split at paragraph boundaries (then at sentence
   ends, then hard) into pieces of at most `max_chars`; pieces shorter than `min_chars`
   are dropped as `too_short`;
4. `exact_duplicate`: the hash of the text with all whitespace removed was seen before;
5. `near_duplicate`: MinHash (64 permutations of character 5-gram shingles, LSH with 16
   bands of 4) finds an earlier kept document whose estimated Jaccard similarity is at
   least `near_dup_threshold` (1.0 disables the check).

Duplicates are checked across all sources in config order, the first occurrence wins.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
MARKUP = re.compile(r"<[A-Za-z/!?][^<>\n]{0,300}>|&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
URL = re.compile(r"(?:https?://|ftp://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+"
                 r"|[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
SPACE = re.compile(r"\s")
SENTENCE_END = re.compile(r"(?<=[。！？!?])")
SHINGLE = 5
NUM_PERM, BANDS = 64, 16
ROWS = NUM_PERM // BANDS


@dataclass
class CleanStats:
    """Counts of one cleaning run: documents and characters per outcome and per reason."""

    docs_in: int = 0
    chars_in: int = 0
    docs_kept: int = 0
    chars_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    """reason -> documents dropped (empty, low_cjk, too_short, exact_duplicate, near_duplicate)."""
    dropped_chars: Counter = field(default_factory=Counter)
    """reason -> characters dropped with them."""
    edits: Counter = field(default_factory=Counter)
    """noise filter -> documents it changed; split_docs / split_pieces for long documents."""

    def to_dict(self) -> dict:
        return {"docs_in": self.docs_in, "chars_in": self.chars_in, "docs_kept": self.docs_kept,
                "chars_kept": self.chars_kept, "dropped": dict(sorted(self.dropped.items())),
                "dropped_chars": dict(sorted(self.dropped_chars.items())), "edits": dict(sorted(self.edits.items()))}

    def drop(self, reason: str, text: str) -> None:
        self.dropped[reason] += 1
        self.dropped_chars[reason] += len(text)


def remove_noise(text: str, max_char_repeat: int, edits: Counter | None = None) -> str:
    """Apply the noise filters (step 1) to one document."""
    edits = edits if edits is not None else Counter()
    repeat = re.compile(r"(.)\1{%d,}" % max_char_repeat, re.S)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for name, pattern, repl in (("control_chars", CONTROL, ""), ("markup", MARKUP, ""), ("urls", URL, ""),
                                ("repeats_squeezed", repeat, r"\1")):
        text, n = pattern.subn(repl, text)
        if n:
            edits[name] += 1
    lines = [line.strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among non-whitespace characters (0 for an empty text)."""
    total = len(text) - len(SPACE.findall(text))
    return len(CJK.findall(text)) / total if total else 0.0


def split_long(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`: whole paragraphs, else sentences, else hard cuts."""
    units: list[str] = []
    for para in text.split("\n"):
        if len(para) <= max_chars:
            units.append(para)
            continue
        for sent in SENTENCE_END.split(para):
            units.extend(sent[i:i + max_chars] for i in range(0, len(sent), max_chars) if sent[i:i + max_chars])
    pieces, cur = [], ""
    for unit in units:
        joined = f"{cur}\n{unit}" if cur else unit
        if len(joined) <= max_chars:
            cur = joined
        else:
            pieces.append(cur)
            cur = unit
    if cur:
        pieces.append(cur)
    return pieces


def filter_document(text: str, cfg, stats: CleanStats) -> list[str]:
    """Steps 1-3 for one document: the pieces that survive (maybe none)."""
    stats.docs_in += 1
    stats.chars_in += len(text)
    clean = remove_noise(text, cfg.max_char_repeat, stats.edits)
    if not clean:
        stats.drop("empty", text)
        return []
    if cjk_ratio(clean) < cfg.min_cjk_ratio:
        stats.drop("low_cjk", clean)
        return []
    pieces = [clean] if len(clean) <= cfg.max_chars else split_long(clean, cfg.max_chars)
    if len(pieces) > 1:
        stats.edits["split_docs"] += 1
        stats.edits["split_pieces"] += len(pieces)
    kept = []
    for piece in pieces:
        if len(piece) < cfg.min_chars:
            stats.drop("too_short", piece)
        else:
            kept.append(piece)
    return kept


# ------------------------------------------------------------------------ duplicates
def exact_key(text: str) -> bytes:
    """Hash of the text with all whitespace removed."""
    return hashlib.blake2b(SPACE.sub("", text).encode("utf-8"), digest_size=16).digest()


_RNG = np.random.default_rng(20210426)  # fixed: signatures must not change between runs
_A = (_RNG.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1))  # odd multipliers
_B = _RNG.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
_POW = np.array([pow(1_000_003, j, 2**64) for j in range(SHINGLE)], dtype=np.uint64)


def minhash(text: str) -> np.ndarray:
    """uint32 [NUM_PERM] MinHash signature of the character 5-gram shingles of `text`."""
    cps = np.frombuffer(SPACE.sub("", text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) == 0:
        return np.zeros(NUM_PERM, np.uint32)
    k = min(SHINGLE, len(cps))
    windows = np.lib.stride_tricks.sliding_window_view(cps, k)  # [n, k]
    shingles = (windows * _POW[:k]).sum(axis=1, dtype=np.uint64)  # polynomial hash mod 2^64
    shingles = np.unique(shingles)
    # multiply-shift hashing: the top 32 bits of (a*x + b) mod 2^64 for each permutation
    hashed = (shingles[:, None] * _A[None, :] + _B[None, :]) >> np.uint64(32)  # [n, NUM_PERM]
    return hashed.min(axis=0).astype(np.uint32)


class Deduplicator:
    """Exact and MinHash near-duplicate detection over a stream of documents (first one wins)."""

    def __init__(self, *, exact: bool = True, near_threshold: float = 0.8) -> None:
        self.exact = exact
        self.near_threshold = near_threshold
        self._seen: set[bytes] = set()
        self._bands: list[dict[bytes, int]] = [{} for _ in range(BANDS)]
        self._sigs: list[np.ndarray] = []

    def check(self, text: str) -> str | None:
        """None if `text` is new (and remember it), else the reason it is a duplicate."""
        if self.exact:
            key = exact_key(text)
            if key in self._seen:
                return "exact_duplicate"
            self._seen.add(key)
        if self.near_threshold >= 1.0:
            return None
        sig = minhash(text)
        keys = [sig[b * ROWS:(b + 1) * ROWS].tobytes() for b in range(BANDS)]
        candidates = sorted({self._bands[b][key] for b, key in enumerate(keys) if key in self._bands[b]})
        for c in candidates:
            if float(np.mean(self._sigs[c] == sig)) >= self.near_threshold:
                return "near_duplicate"
        idx = len(self._sigs)
        self._sigs.append(sig)
        for b, key in enumerate(keys):
            self._bands[b].setdefault(key, idx)
        return None


def clean_corpus(docs: list[str], cfg, stats: CleanStats, dedup: Deduplicator) -> list[str]:
    """All cleaning steps over one source's documents, in order; updates `stats`."""
    out: list[str] = []
    for text in docs:
        for piece in filter_document(text, cfg, stats):
            reason = dedup.check(piece)
            if reason:
                stats.drop(reason, piece)
                continue
            out.append(piece)
            stats.docs_kept += 1
            stats.chars_kept += len(piece)
    return out
