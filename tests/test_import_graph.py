"""The package's import graph has no cycle (issue 13): no module imports, at module level or
lazily inside a function, a module that imports it back, directly or through others.

Every ``import`` / ``from ... import`` statement of every module under engine/ is read with
ast (function bodies included). ``from X import name`` depends on the module ``X.name`` when
that is a module of the package, else on ``X`` (the name is taken from it); importing a
submodule is not counted as a dependency on its parent package (Python imports the parent
first anyway, and a package re-exporting its submodules is the usual layering)."""
import ast
import os

import engine

ROOT = os.path.dirname(engine.__file__)


def _modules() -> dict:
    """{dotted name: path} of every module of the package."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _owner(name, mods):
    """The package module ``name`` refers to (the longest known prefix), or None (not ours)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod, path, mods) -> set:
    pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        deps |= {d for d in (_owner(t, mods) for t in targets) if d is not None and d != mod}
    return deps


def graph() -> dict:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _cycle(g):
    """One cycle of ``g`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(g[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(g):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_reader_sees_imports():
    g = graph()
    assert "engine.kernels.registry" in g["engine.kernels.auto"]       # lazy, inside a function
    assert "engine.kernels.auto" in g["engine.kernels"]
    assert "engine.train" in g["engine.runs"] and "engine.runs" in g["engine.batch"]
    assert "engine.experiments.plotting" in g["engine.experiments.phase"]
    assert "engine.experiments" not in g["engine.experiments.phase"]   # a sibling, not the parent


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_is_acyclic():
    cyc = _cycle(graph())
    assert cyc is None, "import cycle: " + " -> ".join(cyc)
