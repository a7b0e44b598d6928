"""Code corpora for PanGu-Coder: the running interpreter's standard library and user files.

Built-in: `python_stdlib`, the `.py` files of the standard library of the interpreter that runs
this code, found through `sysconfig.get_paths()["stdlib"]` (never a fixed path), without
anything installed into it (`site-packages`, `dist-packages`). User corpora: `python:<path>`,
where the path is a `.py` file, a `.jsonl` file (the code in a `text` or `content` field), a
directory (every `.py` and `.jsonl` file below it) or a glob.

Every file goes through the filters of the secondary sources on PanGu-Coder's data, in this
order, and each drop is counted with its reason (files and bytes):

1. `too_large`: `code.max_file_bytes` (1 MB) or more;
2. `undecodable`: not UTF-8;
3. `unparsable`: `ast.parse` fails (not Python 3, or a null byte);
4. `empty`: nothing but whitespace (many `__init__.py`);
5. `long_mean_line`: mean line length of `code.max_mean_line_chars` (100) or more;
6. `long_line`: a line of `code.max_line_chars` (1000) characters or more;
7. `duplicate`: the MD5 of its bytes was seen before (first file in sorted order wins);
8. `humaneval_entry_point`: it defines a function with a HumanEval entry point's name and the
   same parameter names (the problem's own signature);
9. `humaneval_ngram`: it shares a run of `code.ngram` code tokens with a HumanEval prompt
   plus canonical solution (`code.decontaminate: false` skips 8 and 9).

The survivors are split by file: a file is held out when a hash of its name and
`code.split_seed` falls below `code.heldout_fraction`, so the split of a file never depends on
the other files. Text is kept exactly as stored (line endings included): the tokenizer and the
stage-2 pairs need the real bytes.
"""
from __future__ import annotations

import ast
import glob
import hashlib
import json
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pangu_ms.errors import DataError

STDLIB = "python_stdlib"
USER_PREFIX = "python:"
CODE_SUFFIXES = (".py", ".jsonl")
JSONL_FIELDS = ("text", "content")
INSTALLED_DIRS = {"site-packages", "dist-packages"}
# code tokens for the n-gram check: identifiers/numbers, or one punctuation character
_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
LOAD_SKIPS = ("bad_json", "missing_text_field")  # JSONL lines that hold no code record
FILTERS = ("too_large", "undecodable", "unparsable", "empty", "long_mean_line", "long_line", "duplicate",
           "humaneval_entry_point", "humaneval_ngram")


@dataclass(frozen=True)
class CodeFile:
    """One source file: where it came from and its exact text."""

    name: str
    """path relative to the corpus root (stdlib), or `file.jsonl:LINE` for a JSONL record."""
    text: str


@dataclass
class CodeCorpus:
    """A filtered, split code corpus and the counts of what happened to every file."""

    name: str
    train: list[CodeFile]
    heldout: list[CodeFile]
    dropped: Counter = field(default_factory=Counter)
    """filter -> files it dropped."""
    dropped_bytes: Counter = field(default_factory=Counter)
    """filter -> bytes of those files."""
    files_in: int = 0
    bytes_in: int = 0
    decontamination: list[dict] = field(default_factory=list)
    """one entry per file dropped for HumanEval overlap: file, reason, problems, evidence."""
    root: str = ""
    """where the files were read from."""

    def report(self) -> dict:
        """Counts per filter and per split, JSON-ready."""
        return {"corpus": self.name, "root": self.root, "files_in": self.files_in, "bytes_in": self.bytes_in,
                "dropped": {k: self.dropped[k] for k in FILTERS + LOAD_SKIPS if self.dropped[k]},
                "dropped_bytes": {k: self.dropped_bytes[k] for k in FILTERS if self.dropped[k]},
                "train_files": len(self.train), "train_bytes": _nbytes(self.train),
                "heldout_files": len(self.heldout), "heldout_bytes": _nbytes(self.heldout),
                "decontamination": self.decontamination}


def _nbytes(files: list[CodeFile]) -> int:
    return sum(len(f.text.encode("utf-8")) for f in files)


def is_code_corpus(name: str) -> bool:
    """True for `python_stdlib` and `python:<path>` names."""
    return name == STDLIB or name.startswith(USER_PREFIX)


# ---------------------------------------------------------------------------------- reading
def stdlib_root() -> Path:
    """The standard library directory of the running interpreter."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the interpreter's standard library {root} (sysconfig) is not a directory")
    return root


def _stdlib_files() -> tuple[Path, list[tuple[str, bytes]]]:
    root = stdlib_root()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if INSTALLED_DIRS & set(rel.parts) or not p.is_file():
            continue
        out.append((rel.as_posix(), p.read_bytes()))
    return root, out


def _user_paths(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in CODE_SUFFIXES)
        if not files:
            raise DataError(f"code corpus directory {p} has no .py or .jsonl files")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if files:
            return files
    raise DataError(f"code corpus {USER_PREFIX}{spec}: no such file or directory (or the glob matches nothing)")


def _user_files(spec: str, stats: Counter) -> tuple[Path, list[tuple[str, bytes]]]:
    """(root, [(name, raw bytes)]) of a user corpus; JSONL records become one entry each."""
    paths = _user_paths(spec)
    root = Path(spec) if Path(spec).is_dir() else paths[0].parent
    out = []
    for path in paths:
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        if path.suffix != ".jsonl":
            out.append((rel, path.read_bytes()))
            continue
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                stats["bad_json"] += 1
                continue
            text = next((obj[k] for k in JSONL_FIELDS if isinstance(obj, dict) and isinstance(obj.get(k), str)),
                        None)
            if text is None:
                stats["missing_text_field"] += 1
                continue
            out.append((f"{rel}:{n}", text.encode("utf-8")))
    return root, out


# ---------------------------------------------------------------------------------- filters
def _file_filter(raw: bytes, cfg) -> tuple[str | None, str | None, ast.Module | None]:
    """(reason it is dropped or None, decoded text, syntax tree) for filters 1-6."""
    if len(raw) >= cfg.max_file_bytes:
        return "too_large", None, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "undecodable", None, None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "unparsable", text, None
    if not text.strip():
        return "empty", text, tree
    lines = text.splitlines()
    if sum(map(len, lines)) / len(lines) >= cfg.max_mean_line_chars:
        return "long_mean_line", text, tree
    if max(map(len, lines)) >= cfg.max_line_chars:
        return "long_line", text, tree
    return None, text, tree


def in_heldout(name: str, seed: int, fraction: float) -> bool:
    """The seeded hash split: True if file `name` is held out."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest(), "big")
    return h / 2.0**64 < fraction


class HumanEvalOverlap:
    """What of HumanEval a file may not contain: the problems' signatures and long n-grams."""

    def __init__(self, problems, ngram: int):
        self.n = ngram
        self.signatures: dict[tuple[str, tuple[str, ...]], str] = {}
        for p in problems:
            for node in ast.walk(ast.parse(p.prompt)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == p.entry_point:
                    self.signatures[(node.name, _arg_names(node))] = p.task_id
        names = sorted({name for name, _ in self.signatures}, key=len, reverse=True)
        self._def = re.compile(r"\bdef\s+(?:%s)\s*\(" % "|".join(map(re.escape, names)))
        self.vocab: dict[str, int] = {}
        for p in problems:
            for t in _CODE_TOKEN.findall(p.prompt + p.canonical_solution):
                self.vocab.setdefault(t, len(self.vocab))
        self.hashes: dict[int, str] = {}
        for p in problems:
            tokens = _CODE_TOKEN.findall(p.prompt + p.canonical_solution)
            for i, h in enumerate(self._window_hashes("", tokens).tolist()):
                if _informative(tokens[i:i + self.n]):
                    self.hashes.setdefault(h, p.task_id)
        self._sorted = np.array(sorted(self.hashes), np.uint64)

    def _window_hashes(self, text: str, tokens: list[str] | None = None) -> np.ndarray:
        """uint64 polynomial hashes of every run of n code tokens of `text` ([W])."""
        tokens = _CODE_TOKEN.findall(text) if tokens is None else tokens
        if len(tokens) < self.n:
            return np.zeros(0, np.uint64)
        # tokens HumanEval never uses get id 0: a window holding one cannot match anyway
        ids = np.fromiter((self.vocab.get(t, -1) + 1 for t in tokens), np.uint64, len(tokens))
        windows = np.lib.stride_tricks.sliding_window_view(ids, self.n)  # [W, n]
        powers = np.array([pow(0x9E3779B97F4A7C15, j, 2**64) for j in range(self.n)], np.uint64)
        return (windows * powers).sum(axis=1, dtype=np.uint64)

    def check(self, text: str, tree: ast.Module) -> tuple[str, list[str], str] | None:
        """None, or (reason, HumanEval task ids, evidence) when `text` (parsed: `tree`) overlaps."""
        hits = []
        if self._def.search(text):  # walking every tree is slow; most files define none of the names
            hits = sorted({(self.signatures[key], key[0]) for node in ast.walk(tree)
                           if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                           and (key := (node.name, _arg_names(node))) in self.signatures})
        if hits:
            return "humaneval_entry_point", [t for t, _ in hits], f"def {hits[0][1]}{self._sig(hits[0][1])}"
        tokens = _CODE_TOKEN.findall(text)
        hashes = self._window_hashes(text, tokens)
        where = np.flatnonzero(np.isin(hashes, self._sorted))
        if len(where):
            tasks = sorted({self.hashes[int(h)] for h in hashes[where].tolist()})
            first = " ".join(tokens[where[0]:where[0] + self.n])
            return "humaneval_ngram", tasks, f"{len(where)} shared {self.n}-token runs, first: {first[:160]}"
        return None

    def _sig(self, name: str) -> str:
        args = next(a for (n, a) in self.signatures if n == name)
        return "(" + ", ".join(args) + ")"


def _informative(tokens: list[str], min_words: int = 3) -> bool:
    """An n-gram worth matching names at least `min_words` distinct words: runs of numbers and
    punctuation (`0 , 1 , 2 , ...`) occur everywhere and prove nothing."""
    return len({t for t in tokens if t[0].isalpha() or t[0] == "_"}) >= min_words


def _arg_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    a = node.args
    return tuple(x.arg for x in a.posonlyargs + a.args + a.kwonlyargs)


# ---------------------------------------------------------------------------------- loading
_SCAN: tuple | None = None  # (CodeConfig, HumanEvalOverlap | None) of this worker process


def _init_scan(cfg, overlap) -> None:
    global _SCAN
    _SCAN = (cfg, overlap)


def _scan(item: tuple[str, bytes]) -> tuple[str, str | None, str | None, bytes, tuple | None]:
    """Filters 1-6 and the HumanEval checks of one file: (name, reason, text, md5, overlap hit)."""
    cfg, overlap = _SCAN
    rel, raw = item
    reason, text, tree = _file_filter(raw, cfg)
    hit = overlap.check(text, tree) if reason is None and overlap is not None else None
    return rel, reason, text if reason is None else None, hashlib.md5(raw).digest(), hit


def _scan_all(items: list[tuple[str, bytes]], cfg, overlap, workers: int):
    """`_scan` over every file, in order, in `workers` processes (1: in this process)."""
    import multiprocessing as mp
    import sys

    if workers <= 1 or len(items) < 64:
        _init_scan(cfg, overlap)
        return [_scan(x) for x in items]
    # fork is fast and safe before MindSpore starts its threads; spawn otherwise
    ctx = mp.get_context("fork" if "mindspore" not in sys.modules else "spawn")
    with ctx.Pool(workers, initializer=_init_scan, initargs=(cfg, overlap)) as pool:
        return list(pool.imap(_scan, items, chunksize=8))


def load_code_corpus(name: str, cfg=None, *, workers: int = 0) -> CodeCorpus:
    """Read, filter, decontaminate and split a code corpus (`python_stdlib` or `python:<path>`).

    `cfg` is a `CodeConfig` (default: the paper's thresholds); `workers` processes parse the
    files (0: all cores). Raises DataError for an unknown name, a missing path, or a corpus
    with no file left.
    """
    import os

    from pangu_ms.config import CodeConfig

    cfg = cfg or CodeConfig()
    load_stats: Counter = Counter()
    if name == STDLIB:
        root, raw_files = _stdlib_files()
    elif name.startswith(USER_PREFIX):
        root, raw_files = _user_files(name[len(USER_PREFIX):], load_stats)
    else:
        raise DataError(f"code corpus {name!r}: use {STDLIB!r} or {USER_PREFIX}<file, directory or glob>")
    corpus = CodeCorpus(name, [], [], root=str(root), files_in=len(raw_files),
                        bytes_in=sum(len(b) for _, b in raw_files))
    corpus.dropped.update(load_stats)
    overlap = None
    if cfg.decontaminate:
        from pangu_ms.data.humaneval import load_humaneval

        overlap = HumanEvalOverlap(load_humaneval(), cfg.ngram)
    sizes = dict(raw_files)
    seen: set[bytes] = set()
    for rel, reason, text, digest, hit in _scan_all(raw_files, cfg, overlap, workers or os.cpu_count() or 1):
        if reason is None:
            reason = "duplicate" if digest in seen else None
            seen.add(digest)
        if reason is None and hit:
            reason = hit[0]
            corpus.decontamination.append({"file": rel, "reason": hit[0], "problems": hit[1], "evidence": hit[2]})
        if reason:
            corpus.dropped[reason] += 1
            corpus.dropped_bytes[reason] += len(sizes[rel])
            continue
        split = corpus.heldout if in_heldout(rel, cfg.split_seed, cfg.heldout_fraction) else corpus.train
        split.append(CodeFile(rel, text))
    if not corpus.train:
        raise DataError(f"code corpus {name!r}: no file survives the filters ({dict(corpus.dropped)}) in {root}")
    return corpus


def load_code_documents(name: str, stats: Counter | None = None) -> list[str]:
    """The training files' texts of a code corpus (what `load_documents` gives for code names)."""
    corpus = load_code_corpus(name)
    if stats is not None:
        stats["files"] += corpus.files_in
        stats.update(corpus.dropped)
    return [f.text for f in corpus.train]
