"""The package's shape (issue 9): floors, no import cycles, small modules.

The module graph is built from the source with ``ast``, function-level imports
included, so a cycle hidden inside a function fails here as well.
"""

import ast
import os

import pytest

pytestmark = pytest.mark.timeout(30)

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kproc")
MAX_LINES = 450

# Each floor may import only from floors below it (and from within its own package).
FLOORS = [
    {"kproc._native", "kproc._core"},
    {"kproc._sched"},
    {"kproc._kthread", "kproc._freezer"},
    {"kproc._workqueue", "kproc._hotplug"},
    {"kproc._pool"},
    {"kproc"},
    {"kproc._cli", "kproc._bench", "kproc.__main__"},
]


def _modules():
    """{dotted module name: path} of every module of the package."""
    out = {}
    root = os.path.dirname(PACKAGE)
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    out["kproc._native"] = None      # the C extension: imports nothing of ours
    assert len(out) > 30, f"found only {sorted(out)} under {PACKAGE}"
    return out


def _is_package(path):
    return path.endswith("__init__.py")


def _imports(name, path, known):
    """(target module, line, top-level?) for every kproc import in ``path``."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if _is_package(path) else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "kproc" and target != name:
                found.append((target, node.lineno, id(node) in top_level))
    return found


def _graph():
    known = _modules()
    return known, {name: _imports(name, path, known) if path else []
                   for name, path in known.items()}


def _floor(module):
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return best[0]


def test_no_import_cycles():
    """No cycle among kproc's modules, function-level imports included."""
    _known, graph = _graph()
    edges = {m: {t for t, _l, _top in deps if t in graph} for m, deps in graph.items()}
    # The face imports every subpackage and a package's __init__ its modules:
    # an import of a package means its __init__, which is a node of its own.
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_floors():
    """_core -> _sched -> _kthread/_freezer -> _workqueue/_hotplug -> face -> _cli/_bench."""
    _known, graph = _graph()
    upward = []
    for module, deps in graph.items():
        for target, line, _top in deps:
            if target in graph and _floor(target) > _floor(module):
                upward.append(f"{module}:{line} imports {target}")
    assert upward == []


def test_function_level_imports_say_why():
    """A function-level import of kproc's own modules is kept only with a reason."""
    known, graph = _graph()
    silent = []
    for module, deps in graph.items():
        if not deps:
            continue
        with open(known[module]) as f:
            lines = f.read().splitlines()
        for _target, line, top in deps:
            if not top and "#" not in lines[line - 1] and \
                    not lines[line - 2].strip().startswith("#"):
                silent.append(f"{module}:{line}: {lines[line - 1].strip()}")
    assert silent == []


def test_no_module_over_450_lines():
    """One mechanism per file: a module past 450 lines is doing two things."""
    big = {}
    for name, path in _modules().items():
        if path is None:
            continue
        with open(path) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            big[name] = n
    assert big == {}
