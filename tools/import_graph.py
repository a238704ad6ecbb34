"""How the house stands, counted from its imports (issue 19's before-and-after figures).

    .venv/bin/python tools/import_graph.py [--json]     (measures the checkout it sits in)

Reads every import of the lab's packages with grimp (import-linter's graph library) and
the source's own syntax tree, and prints, per package and in all:

* modules, and import levels: the longest chain of imports once each cycle is folded into
  one node (a module that imports nothing of the lab is level 1);
* cycles: groups of modules that import each other, directly or round a loop, and how many
  of their imports are function-local (a local import hides a cycle from a reader);
* function-local imports of the lab's own modules, in all;
* what ``import caslab.spec.experiment`` loads (validating a spec should need no network code),
  counted by importing it in a child process.

A package whose ``__init__`` collects its modules with ``pkgutil.iter_modules`` (the mode
and fault registries) imports each of them, though no import statement says so: those
edges are added. Apart from the one child import, nothing of the lab is run.
"""

from __future__ import annotations

import argparse
import ast
import json
import pkgutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure the tree this file sits in, not an installed copy
PACKAGES = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"])


def module_path(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def local_import_lines(module: str) -> set[int]:
    """Line numbers of the imports that sit inside a function (or a class) body."""
    tree = ast.parse(module_path(module).read_text(), filename=str(module_path(module)))
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    lines.add(inner.lineno)
    return lines


def edges(graph) -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Every import between two of the lab's modules, and which of them are only local."""
    out: dict[str, set[str]] = defaultdict(set)
    local_only: set[tuple[str, str]] = set()
    for importer in graph.modules:
        local = local_import_lines(importer)
        for imported in graph.find_modules_directly_imported_by(importer):
            out[importer].add(imported)
            details = graph.get_import_details(importer=importer, imported=imported)
            if details and all(d["line_number"] in local for d in details):
                local_only.add((importer, imported))
    return out, local_only


def strongly_connected(nodes: list[str], out: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the graph is small, the recursion limit is not the point)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(out.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(out.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def levels(nodes: list[str], out: dict[str, set[str]], groups: list[list[str]]) -> dict[str, int]:
    """Each module's level: 1 + the highest level among what it imports (cycles folded)."""
    group_of = {m: i for i, g in enumerate(groups) for m in g}
    level: dict[int, int] = {}

    def group_level(i: int) -> int:
        if i not in level:
            below = {group_of[t] for m in groups[i] for t in out.get(m, ()) if group_of[t] != i}
            level[i] = 1 + max((group_level(j) for j in below), default=0)
        return level[i]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(groups) + 100))
    return {m: group_level(group_of[m]) for m in nodes}


def plugin_edges(nodes: list[str]) -> dict[str, set[str]]:
    """A registry package imports each of its modules at run time (pkgutil)."""
    out: dict[str, set[str]] = defaultdict(set)
    for package in nodes:
        init = module_path(package)
        if init.name == "__init__.py" and "pkgutil.iter_modules(" in init.read_text():
            out[package] |= {f"{package}.{info.name}" for info in pkgutil.iter_modules([str(init.parent)])}
    return out


def loaded_by_importing(module: str) -> list[str]:
    """The lab's modules in sys.modules after ``import module``, in a fresh interpreter."""
    code = (f"import sys, {module}; print('\\n'.join(m for m in sys.modules "
            f"if m.split('.')[0] in {PACKAGES!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(done.stdout.split())


def survey() -> dict:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    nodes = sorted(m for m in graph.modules if module_path(m).exists())
    out, local_only = edges(graph)
    for package, modules in plugin_edges(nodes).items():
        out[package] |= modules
    groups = strongly_connected(nodes, out)
    cycles = [g for g in groups if len(g) > 1]
    level = levels(nodes, out, groups)
    cyclic_edges = [(a, b) for g in cycles for a in g for b in out.get(a, ()) if b in g]
    packages = {}
    for package in PACKAGES:
        mine = [m for m in nodes if m == package or m.startswith(package + ".")]
        packages[package] = {"modules": len(mine), "levels": max((level[m] for m in mine), default=0)}
    rooms: dict[str, int] = {}
    for m in nodes:
        if m.startswith("caslab."):
            room = m.split(".")[1] if module_path(".".join(m.split(".")[:2])).name == "__init__.py" else "(flat)"
            rooms[room] = rooms.get(room, 0) + 1
    spec_loads = loaded_by_importing("caslab.spec.experiment")
    return {
        "modules": len(nodes),
        "imports": sum(len(v) for v in out.values()),
        "levels": max(level.values(), default=0),
        "packages": packages,
        "engine rooms": rooms,
        "cycles": [{"modules": g, "imports": sum(1 for a, b in cyclic_edges if a in g),
                    "local": sum(1 for a, b in cyclic_edges if a in g and (a, b) in local_only)} for g in cycles],
        "local_imports": len(local_only),
        "caslab.spec.experiment loads": [m for m in spec_loads if m.startswith("caslab")],
    }


def show(s: dict) -> str:
    lines = [f"modules {s['modules']}, imports between them {s['imports']}, import levels {s['levels']}",
             "per package: " + ", ".join(f"{p} {v['modules']} modules / {v['levels']} levels"
                                         for p, v in s["packages"].items()),
             "the engine's rooms (modules each; (flat): modules directly in caslab/): "
             + ", ".join(f"{r} {n}" for r, n in s["engine rooms"].items()),
             f"function-local imports of the lab's own modules: {s['local_imports']}",
             f"cycles: {len(s['cycles'])} ({sum(c['imports'] for c in s['cycles'])} imports inside them, "
             f"{sum(c['local'] for c in s['cycles'])} of them function-local)"]
    lines += [f"  {len(c['modules'])} modules: {' '.join(c['modules'])}" for c in s["cycles"]]
    loads = s["caslab.spec.experiment loads"]
    lines.append(f"import caslab.spec.experiment loads {len(loads)} engine modules: {' '.join(loads)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args(argv)
    figures = survey()
    print(json.dumps(figures, indent=2) if args.json else show(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
