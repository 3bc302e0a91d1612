"""House rules on imports (DESIGN.md): imports run one way, and no module imports another's private names.

* Every `ptrader` module imports on its own in a fresh interpreter (no module depends on another having
  been imported first, as an import cycle would).
* The package's internal import graph, function-level (lazy) imports included, has no cycle.
* No module imports a `_private` name of another `ptrader` module, or reads one as an attribute of an
  imported `ptrader` module.
"""
import ast
import os
from concurrent.futures import ThreadPoolExecutor
import subprocess
import sys
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "ptrader"
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "_modidx"))


def _target(node: ast.ImportFrom, name: str | None = None) -> str | None:
    "The ptrader module an ImportFrom refers to (`from .x import y`, `from ptrader.x import y`, `from ptrader import x`)."
    mod = node.module or ""
    if node.level == 1: mod = f"ptrader.{mod}" if mod else "ptrader"
    if not (mod == "ptrader" or mod.startswith("ptrader.")): return None
    if mod == "ptrader" and name is not None and name in MODULES: return f"ptrader.{name}"
    return mod


def _imports(path: Path):
    "(ptrader modules imported, private names imported or read from them) of one module, lazy imports included."
    tree = ast.parse(path.read_text())
    mods, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ptrader."):
                    mods.add(a.name); aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                t = _target(node, a.name)
                if t is None: continue
                if t == "ptrader" and a.name.startswith("__"): continue       # ptrader.__version__
                mods.add(t if t != "ptrader" else "ptrader")
                if t.count(".") == 1 and t.split(".")[1] == a.name:            # `from ptrader import stats as _st`
                    aliases[a.asname or a.name] = t
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    private.append(f"{t}.{a.name} (line {node.lineno})")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{aliases[node.value.id]}.{node.attr} (line {node.lineno})")
    return {m for m in mods if m != "ptrader"}, private


def test_no_module_imports_another_modules_private_names():
    bad = {m: p for m in MODULES if (p := _imports(PKG / f"{m}.py")[1])}
    assert not bad, f"private names imported across modules: {bad}"


def test_the_internal_import_graph_has_no_cycle():
    graph = {f"ptrader.{m}": _imports(PKG / f"{m}.py")[0] for m in MODULES}
    state = {}

    def visit(m, path):
        if state.get(m) == 1: raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2: return
        state[m] = 1
        for d in sorted(graph.get(m, ())): visit(d, path + [m])
        state[m] = 2

    for m in graph: visit(m, [])
    # the execution layer's order: sizing and broker below execution, portfolio above it
    assert "ptrader.portfolio" not in graph["ptrader.execution"]
    assert {"ptrader.broker", "ptrader.sizing"} <= graph["ptrader.execution"] and "ptrader.execution" in graph["ptrader.portfolio"]
    assert not graph["ptrader.broker"] & {"ptrader.execution", "ptrader.portfolio", "ptrader.sizing"}


def test_each_module_imports_in_a_fresh_interpreter():
    "One interpreter per module, as many at a time as there are CPUs (each pays for numpy/pandas/numba itself)."
    def run(m):
        r = subprocess.run([sys.executable, "-c", f"import ptrader.{m}"], cwd=PKG.parent, capture_output=True,
                           text=True, timeout=600)
        return m, r.returncode, r.stderr[-1500:]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failed = {m: err for m, rc, err in pool.map(run, MODULES) if rc != 0}
    assert not failed, failed
