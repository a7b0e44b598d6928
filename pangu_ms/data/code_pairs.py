"""Stage-2 data of PanGu-Coder: docstring-to-function pairs, their rows and the CODE-CLM loss mask.

A function (or method, or nested function) whose body starts with a docstring becomes a pair:

- `docstring`: the docstring's text (`ast.get_docstring`, indentation cleaned);
- `code`: the function's source without the docstring statement's lines: decorators,
  signature and body, exactly as written except that the function's own indentation is
  removed from every line (a method reads like a top-level function);
- `prompt` / `body`: the same source cut after the docstring (`prompt + body` is the
  dedented function with its docstring, as a HumanEval prompt and its completion read).

Source text comes from line offsets of the syntax tree, never from unparsing, so every
character (comments, blank lines, quoting style) is the file's. A function is skipped, and
counted by reason, when its docstring shares a line with other code, when a line of it is
indented less than its `def` (a string literal reaching column 0: it cannot be dedented
exactly), when nothing but the docstring (or `pass` / `...` / `raise NotImplementedError`)
is left, or when the code without the docstring no longer parses.

Rows (`code.pair_layout`): `tagged`, after the secondary sources on PanGu-Coder,
`<comments> docstring <python> code <eot>`; `inline`, `prompt body <eot>`. The loss covers the
code tokens and `<eot>` only (CODE-CLM): `loss_mask` aligns one flag with each label
(the label of position j is id j+1), so the docstring stays in the input but is never a target.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pangu_ms.errors import DataError

SKIP_REASONS = ("docstring_shares_line", "not_dedentable", "docstring_only", "stub_body", "unparsable_without_docstring")


@dataclass(frozen=True)
class CodePair:
    """One function with a docstring, split for stage 2."""

    file: str
    """corpus name of the file it came from."""
    name: str
    """the function's name."""
    lineno: int
    """line of its `def` in the file (1-based)."""
    docstring: str
    """the docstring's text, indentation cleaned."""
    code: str
    """decorators, signature and body without the docstring lines, dedented."""
    prompt: str
    """decorators, signature and the docstring as written, dedented (ends with a newline)."""
    body: str
    """the rest of the function after the docstring."""


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def _lines(text: str) -> list[str]:
    """Lines with their endings, split where `ast` counts lines (\\n, \\r\\n, \\r only:
    `str.splitlines` also breaks at form feeds and other characters that Python does not)."""
    return _LINE.findall(text)


def _cols(line: str, col: int) -> tuple[str, str]:
    """`line` split at `ast` column `col`, which counts UTF-8 bytes."""
    raw = line.encode("utf-8")
    return raw[:col].decode("utf-8", "replace"), raw[col:].decode("utf-8", "replace")


def _is_stub(stmts: list[ast.stmt]) -> bool:
    if len(stmts) != 1:
        return False
    s = stmts[0]
    if isinstance(s, ast.Pass):
        return True
    if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is Ellipsis:
        return True
    if isinstance(s, ast.Raise) and s.exc is not None:
        exc = s.exc.func if isinstance(s.exc, ast.Call) else s.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _dedent(lines: list[str], indent: str) -> list[str] | None:
    """Remove `indent` from every line; a blank line without it stays as it is; None if a
    line with text lacks it."""
    out = []
    for line in lines:
        if line.startswith(indent):
            out.append(line[len(indent):])
        elif not line.strip():
            out.append(line)
        else:
            return None
    return out


def function_pair(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], file: str,
                  stats: Counter) -> CodePair | None:
    """The pair of one function node of a file whose lines are `lines`, or None (counted)."""
    doc = node.body[0]
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    last = node.end_lineno
    ds_start, ds_end = doc.lineno, doc.end_lineno
    def_line = lines[node.lineno - 1]
    # the docstring must own its lines: nothing but indentation before it, nothing at all after it
    # (a comment or `; stmt` there would be lost with the docstring's lines)
    if _cols(lines[ds_start - 1], doc.col_offset)[0].strip() or _cols(lines[ds_end - 1], doc.end_col_offset)[1].strip():
        stats["docstring_shares_line"] += 1
        return None
    rest = node.body[1:]
    if not rest:
        stats["docstring_only"] += 1
        return None
    if _is_stub(rest):
        stats["stub_body"] += 1
        return None
    indent = def_line[:len(def_line) - len(def_line.lstrip(" \t"))]
    func = _dedent(lines[first - 1:last], indent)
    if func is None:
        stats["not_dedentable"] += 1
        return None
    k0, k1 = ds_start - first, ds_end - first + 1  # the docstring's lines within `func`
    prompt, body = "".join(func[:k1]), "".join(func[k1:])
    code = "".join(func[:k0]) + body
    if not prompt.endswith(("\n", "\r")):
        prompt += "\n"  # the docstring closed the file without a newline: only possible with no body
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        stats["unparsable_without_docstring"] += 1
        return None
    return CodePair(file, node.name, node.lineno, ast.get_docstring(node, clean=True) or "", code, prompt, body)


def extract_pairs(text: str, file: str = "<text>", stats: Counter | None = None,
                  tree: ast.Module | None = None) -> list[CodePair]:
    """Every docstring-to-code pair of one source file, in source order."""
    stats = stats if stats is not None else Counter()
    tree = tree or ast.parse(text)
    lines = _lines(text)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        stats["functions"] += 1
        b0 = node.body[0]
        if not (isinstance(b0, ast.Expr) and isinstance(b0.value, ast.Constant) and isinstance(b0.value.value, str)):
            continue
        stats["with_docstring"] += 1
        pair = function_pair(node, lines, file, stats)
        if pair is not None:
            stats["pairs"] += 1
            out.append(pair)
    out.sort(key=lambda p: p.lineno)
    return out


def _pairs_of(item: tuple[str, str]) -> tuple[list[CodePair], Counter]:
    stats: Counter = Counter()
    return extract_pairs(item[1], item[0], stats), stats


def corpus_pairs(files, *, workers: int = 0) -> tuple[list[CodePair], dict]:
    """Pairs of every `CodeFile` in `files` (in order) and their counts, in `workers` processes."""
    import multiprocessing as mp
    import os
    import sys

    items = [(f.name, f.text) for f in files]
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(items) < 64:
        results = [_pairs_of(x) for x in items]
    else:
        ctx = mp.get_context("fork" if "mindspore" not in sys.modules else "spawn")
        with ctx.Pool(workers) as pool:
            results = list(pool.imap(_pairs_of, items, chunksize=8))
    pairs: list[CodePair] = []
    total: Counter = Counter()
    for p, c in results:
        pairs.extend(p)
        total.update(c)
    counts = {"files": len(items), "functions": total["functions"], "with_docstring": total["with_docstring"],
              "pairs": total["pairs"], "skipped": {k: total[k] for k in SKIP_REASONS if total[k]}}
    return pairs, counts


# ---------------------------------------------------------------------------------- rows and loss mask
def pair_ids(tok, pair: CodePair, layout: str) -> tuple[list[int], list[bool]]:
    """Token ids of one pair in `layout` and, per id, whether it is a CODE-CLM target.

    tagged: `<comments>` docstring `<python>` code `<eot>`; inline: prompt body `<eot>`.
    Targets are the code ids (tagged) or the body ids (inline), and `<eot>`.
    """
    if layout == "tagged":
        doc, code = tok.encode(pair.docstring), tok.encode(pair.code)
        ids = [tok.comments_id] + doc + [tok.python_id] + code + [tok.eot_id]
        target = [False] * (len(doc) + 2) + [True] * (len(code) + 1)
    elif layout == "inline":
        head, body = tok.encode_split(pair.prompt, pair.body)
        ids = head + body + [tok.eot_id]
        target = [False] * len(head) + [True] * (len(body) + 1)
    else:
        raise DataError(f"code.pair_layout={layout!r}: use 'tagged' or 'inline'")
    return ids, target


def mask_docstring(ids: list[int], fraction: float, tok, rng: np.random.Generator) -> tuple[list[int], int]:
    """A tagged pair's ids with round(fraction * d) of its d docstring ids (those between
    `<comments>` and `<python>`), drawn without replacement, replaced by `<mask>`; and that number.
    The code, the tags and the CODE-CLM targets are untouched."""
    start, stop = ids.index(tok.comments_id) + 1, ids.index(tok.python_id)
    k = round(fraction * (stop - start))
    out = list(ids)
    for i in rng.choice(np.arange(start, stop), size=k, replace=False):
        out[i] = tok.mask_id
    return out, k


def loss_mask(target: list[bool] | np.ndarray) -> np.ndarray:
    """float32 [len - 1]: 1 where the label (the next id) is a target, for a row of len ids.

    A row of ids x[0..L-1] trains on inputs x[:-1] against labels x[1:]; label j is x[j+1], so
    its flag is target[j+1]. The first id is never a label.
    """
    return np.asarray(target, bool)[1:].astype(np.float32)


def pack_pairs(rows: list[tuple[list[int], list[bool]]], seq_length: int, pad_id: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Greedily pack pair rows (in order) into rows of `seq_length + 1` ids, never splitting a pair.

    Returns ids int32 [N, seq_length + 1], loss mask float32 [N, seq_length] (aligned with the
    labels ids[:, 1:]; padding and the docstrings are 0), the pair index of every id int32
    [N, seq_length + 1] (-1 on padding: what per-pair attention and position resets need) and
    counts. A pair longer than a row is dropped and counted.
    """
    width = seq_length + 1
    out_ids, out_target, out_doc = [], [], []
    cur_ids: list[int] = []
    cur_t: list[bool] = []
    cur_d: list[int] = []
    too_long = 0

    def flush() -> None:
        pad = width - len(cur_ids)
        out_ids.append(cur_ids + [pad_id] * pad)
        out_target.append(cur_t + [False] * pad)
        out_doc.append(cur_d + [-1] * pad)

    for k, (ids, target) in enumerate(rows):
        if len(ids) > width:
            too_long += 1
            continue
        if len(cur_ids) + len(ids) > width:
            flush()
            cur_ids, cur_t, cur_d = [], [], []
        cur_ids += ids
        cur_t += target
        cur_d += [k] * len(ids)
    if cur_ids:
        flush()
    ids = np.array(out_ids, np.int32).reshape(-1, width)
    mask = np.array(out_target, bool).reshape(-1, width)[:, 1:].astype(np.float32)
    docs = np.array(out_doc, np.int32).reshape(-1, width)
    # a label that starts the next pair is not a target of the previous one: its own first id
    # (<comments> or the prompt's first id) is never a target, so the mask already says 0 there
    return ids, mask, docs, {"pairs": len(rows) - too_long, "too_long": too_long, "rows": len(ids),
                             "target_tokens": int(mask.sum()), "tokens": int((docs >= 0).sum())}
