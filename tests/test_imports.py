"""The package's import structure: no cycles, a light command line, every module importable on its own.

(a) The import graph of src/morphllr is built from the source (every ``import`` statement, also those
    inside functions, since a lazy import still ties two modules together); it must be acyclic.
(b) ``import morphllr.cli`` and ``morphllr --help`` must not pull in torch, GalSim or matplotlib.
(c) Every module must import in a fresh interpreter state: an import that only works after some
    other module has been imported first is a hidden cycle or a missing import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import morphllr

PACKAGE_DIR = Path(morphllr.__file__).resolve().parent
PACKAGE = "morphllr"
HEAVY = ("torch", "galsim", "matplotlib")


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (packages by their __init__)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The package modules one import statement loads (the innermost module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's own package, one level up per extra dot
            base = module.split(".") if modules[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
    targets = []
    for name in names:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        while name not in modules and "." in name:  # `import morphllr.x.function`: the module that holds it
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            targets.append(name)
    return targets


def import_graph() -> dict[str, dict[str, set[int]]]:
    """module -> {imported package module: line numbers of the import statements}."""
    modules = _modules()
    graph: dict[str, dict[str, set[int]]] = {name: defaultdict(set) for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(name, node, modules):
                    graph[name][target].add(node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, set[int]]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (= the import cycles), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def test_the_cycle_finder_finds_a_known_cycle():
    """The checker itself: a three-module cycle beside an acyclic part is found, whole and alone."""
    graph = {"a": {"b": {1}}, "b": {"c": {1}}, "c": {"a": {1}, "d": {2}}, "d": {"e": {1}}, "e": {}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b": {1}}, "b": {}}) == []


def test_the_graph_sees_function_level_and_relative_imports():
    modules = {"morphllr": Path("__init__.py"), "morphllr.x": Path("x.py"), "morphllr.sub": Path("__init__.py"),
               "morphllr.sub.y": Path("y.py"), "morphllr.sub.z": Path("z.py")}
    source = ("import numpy\n"
              "from morphllr.sub import helper\n"  # a name of the package's __init__
              "def f():\n"
              "    from . import z\n"  # a sibling module, relative
              "    from ..x import thing\n"  # a name of a module, relative
              "    import morphllr.x.thing\n"  # dotted down to a function
              "    from morphllr.sub import y\n")  # itself: no edge
    found = [target for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
             for target in _targets("morphllr.sub.y", node, modules)]
    assert sorted(found) == ["morphllr.sub", "morphllr.sub.z", "morphllr.x", "morphllr.x"]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and graph["morphllr.cli"], "the package was not found or not parsed"
    assert "morphllr.atomic" in graph["morphllr.cli.train"]  # an import inside a command function counts
    cycles = strongly_connected(graph)
    lines = []
    for component in cycles:
        lines.append("cycle among: " + ", ".join(component))
        members = set(component)
        for module in component:
            for target, numbers in sorted(graph[module].items()):
                if target in members:
                    lines.append(f"    {module} -> {target} (line {', '.join(map(str, sorted(numbers)))})")
    assert not cycles, f"{len(cycles)} import cycle(s) among the package's modules:\n" + "\n".join(lines)


_LIGHT_CLI = """
import json, sys
import morphllr.cli
try:
    morphllr.cli.main(["--help"])
except SystemExit:
    pass
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


def test_the_command_line_does_not_import_heavy_libraries():
    done = subprocess.run([sys.executable, "-c", _LIGHT_CLI.format(heavy=HEAVY)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], (f"`import morphllr.cli` / `morphllr --help` imported {', '.join(loaded)}; import it "
                          "inside the command that needs it")


_EACH_ALONE = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "morphllr" or m.startswith("morphllr.")]:
        del sys.modules[loaded]  # every module starts from a package nobody imported yet
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print("RESULT" + json.dumps(failures))
"""


def test_every_module_imports_on_its_own():
    names = [name for name in _modules() if not name.endswith(".__main__")]  # __main__ runs the CLI
    done = subprocess.run([sys.executable, "-c", _EACH_ALONE, json.dumps(names)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    failures = json.loads(done.stdout.rsplit("RESULT", 1)[1])
    assert not failures, "modules that fail to import on their own:\n" + "\n".join(
        f"{name}:\n{text}" for name, text in failures.items())
