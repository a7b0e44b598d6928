"""The import graph of the package: imports run one way, and subpackages form no cycle.

    cli -> finetune -> eval -> train, infer -> cluster, checkpoint -> parallel -> models, data
        -> kernels, tokenizer, runtime -> config -> errors

Every `import pangu_ms.X...` / `from pangu_ms.X... import` in a module of unit U (a
subpackage or top-level module of `pangu_ms`), at module level or inside a function, must
name a unit below U in `LAYERS` or U itself. Lazy imports count: they are still a
dependency, only a later one.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pangu_ms"

# unit -> layer; a unit may import only units of a lower layer (or itself)
LAYERS = {
    "errors": 0,
    "config": 1,
    "kernels": 2, "tokenizer": 2, "runtime": 2,
    "models": 3, "data": 3,
    "parallel": 4,
    "cluster": 5, "checkpoint": 5,
    "train": 6, "infer": 6,
    "eval": 7,
    "finetune": 8,
    "cli": 9, "__main__": 10, "__init__": 10,
}


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported pangu_ms unit) for every import of the package in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"pangu_ms.{a.name}" for a in node.names] if node.module == "pangu_ms" else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "pangu_ms" and len(parts) > 1 and name != "pangu_ms":
                out.append((node.lineno, parts[1]))
    return out


def edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, 'file:line') over the whole package."""
    out = []
    for f in sorted(PACKAGE.rglob("*.py")):
        me = unit_of(f)
        for line, other in imports(f):
            if other != me:
                out.append((me, other, f"{f.relative_to(PACKAGE.parent)}:{line}"))
    return out


def test_every_unit_has_a_layer():
    units = {unit_of(f) for f in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS in {Path(__file__).name}"


def test_imports_run_one_way():
    wrong = [f"{where}: {a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS.get(b, '?')})"
             for a, b, where in edges() if b not in LAYERS or LAYERS[b] >= LAYERS[a]]
    assert not wrong, "imports against the direction cli -> ... -> config:\n" + "\n".join(wrong)


def test_no_cycles_between_subpackages():
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_lazy_and_from_imports(tmp_path):
    f = PACKAGE / "models" / "pangu_alpha.py"
    found = {u for _, u in imports(f)}
    assert "config" in found  # from pangu_ms.config import ModelConfig
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from pangu_ms.train import step\n    import pangu_ms.cli.plan\nfrom pangu_ms import data\n")
    assert sorted(u for _, u in imports(probe)) == ["cli", "data", "train"]
