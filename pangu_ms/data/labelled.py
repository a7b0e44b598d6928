"""Labelled examples for evaluation and fine-tuning, with fixed splits.

`shopping_reviews` (built in, from `pangu_ms.data.corpora.load_shopping_reviews`): texts are
whitespace-normalised, exact duplicates are dropped (a text seen with both labels is dropped
altogether), then every text gets a rank from the SHA-1 of its normalised form. The test split
is the first `TEST_PER_CLASS` positives and negatives by that rank (balanced, fixed, independent
of file order and of any seed); everything else is the train split. A text in the test split
therefore never appears in the train split, not even as a duplicate line.

User data: a JSON-lines file with one object per line; classification needs `text` and
`label` fields, generation tasks `input` and `target` (field names are set in the task YAML).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pangu_ms.data.corpora import read_json_lines
from pangu_ms.errors import DataError

TEST_PER_CLASS = 500
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Example:
    """One labelled example: `text` and a label key (classification) or target text (generation)."""

    text: str
    label: str


def normalise(text: str) -> str:
    """Collapse runs of whitespace to one space and strip."""
    return _SPACE.sub(" ", text).strip()


def _rank(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def sentiment_splits(test_per_class: int = TEST_PER_CLASS) -> dict[str, list[Example]]:
    """{'train': [...], 'test': [...]} of shopping reviews; labels '1' positive, '0' negative."""
    from pangu_ms.data.corpora import load_shopping_reviews

    labels: dict[str, set[int]] = {}
    for text, label in load_shopping_reviews():
        t = normalise(text)
        if t:
            labels.setdefault(t, set()).add(int(label))
    unique = sorted(((t, next(iter(ls))) for t, ls in labels.items() if len(ls) == 1), key=lambda x: _rank(x[0]))
    test: list[Example] = []
    train: list[Example] = []
    taken = {0: 0, 1: 0}
    for text, label in unique:
        if taken[label] < test_per_class:
            taken[label] += 1
            test.append(Example(text, str(label)))
        else:
            train.append(Example(text, str(label)))
    if min(taken.values()) < test_per_class:
        raise DataError(f"shopping_reviews has fewer than {test_per_class} unique reviews per class")
    return {"train": train, "test": test}


BUILTIN_DATASETS = {"shopping_reviews": sentiment_splits}


def read_jsonl(path: str | Path, text_field: str, label_field: str) -> list[Example]:
    """Examples from a JSON-lines file (labels are read as strings)."""
    p = Path(path)
    out = []
    for n, obj in read_json_lines(p, "task data"):
        if not isinstance(obj, dict) or text_field not in obj or label_field not in obj:
            raise DataError(f"{p}:{n}: expected an object with fields {text_field!r} and {label_field!r}")
        out.append(Example(str(obj[text_field]), str(obj[label_field])))
    if not out:
        raise DataError(f"{p}: no examples")
    return out


def load_split(dataset: str, split: str, *, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """A split of a built-in dataset, or a JSONL file (`split` is then ignored)."""
    if dataset in BUILTIN_DATASETS:
        splits = BUILTIN_DATASETS[dataset]()
        if split not in splits:
            raise DataError(f"dataset {dataset!r} has splits {sorted(splits)}, not {split!r}")
        return splits[split]
    if Path(dataset).is_file():
        return read_jsonl(dataset, text_field, label_field)
    raise DataError(f"dataset {dataset!r} is neither built in ({', '.join(BUILTIN_DATASETS)}) nor a JSONL file")
