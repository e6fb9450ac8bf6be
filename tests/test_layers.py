"""Chute's modules import each other in layers, without cycles.

Read from the source with `ast`, nothing imported: every import statement counts,
those inside functions and under `if TYPE_CHECKING:` too, since a lazy import is a
cycle put off, not removed. Importing `a.b.c` runs `a.b`'s `__init__` as well, so the
graph has an edge to each package on the way, except the importer's own packages
(already being imported when it runs). Imports by name at run time (`importlib`,
entry points) are not seen.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import pytest

import chute

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path, package: str) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> Graph:
    """Each module of the package under `root`, and the package's modules it imports."""
    files = {module_name(path, root, package): path for path in sorted(root.rglob("*.py"))}
    return {name: _imports(name, path, set(files)) for name, path in files.items()}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.module, node.level)
            for alias in node.names:
                # `from a import b` imports the module a.b when there is one, else a.
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    own_packages = set(_packages_of(name))
    targets: set[str] = set()
    for target in found:
        targets.update(t for t in [target, *_packages_of(target)] if t not in own_packages)
    return {t for t in targets if t in known and t != name}


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".")
    package = parts if is_package else parts[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _packages_of(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reachable(graph: Graph, start: str) -> dict[str, str]:
    """Every module `start` imports, directly or not, with the one it was first reached
    from; `start` itself among them when its imports lead back to it."""
    came_from: dict[str, str] = {}
    todo = deque([start])  # breadth first: the paths found are shortest ones
    while todo:
        module = todo.popleft()
        for target in sorted(graph.get(module, ())):
            if target not in came_from:
                came_from[target] = module
                if target != start:
                    todo.append(target)
    return came_from


def path_to(graph: Graph, start: str, goal: str) -> list[str] | None:
    """A shortest chain of imports from `start` to `goal` (a cycle when they are one)."""
    came_from = reachable(graph, start)
    if goal not in came_from:
        return None
    path = [goal]
    module = came_from[goal]
    while module != start:
        path.append(module)
        module = came_from[module]
    return [start, *reversed(path)]


def cycles(graph: Graph) -> list[list[str]]:
    """For each group of modules that import each other (a strongly connected
    component), a shortest cycle through its first module by name."""
    found = []
    for group in _components(graph):
        first = min(group)
        cycle = path_to({m: graph[m] & group for m in group}, first, first)
        assert cycle is not None  # a component's members reach each other
        found.append(cycle)
    return sorted(found)


def _components(graph: Graph) -> Iterable[set[str]]:
    """Tarjan's strongly connected components of more than one module (no module's
    edges lead to itself); iterative, so a long chain of imports needs no deep stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == module:
                        break
                if len(group) > 1:
                    yield group


@pytest.fixture(scope="module")
def chute_graph() -> Graph:
    return import_graph(Path(chute.__file__).parent, "chute")


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_walk_sees_chutes_imports(chute_graph: Graph) -> None:
    """Without this, a walk that found nothing would pass every rule below."""
    assert "chute.jobs.worker" in chute_graph["chute.cli"]  # inside `cmd_worker`
    assert "chute.storage" in chute_graph["chute.runtime"]  # `from chute.storage import ...`
    assert "chute.storage.base" in chute_graph["chute.storage"]


def test_the_walk_finds_a_cycle_put_off_into_a_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import B\n")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from ..c import C\nB = 1\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    (package / "d.py").write_text("from . import c\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}  # not its own package, pkg.sub
    assert graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_upload_imports_nothing_of_jobs(chute_graph: Graph) -> None:
    """What `chute.upload`'s own modules name. The runtime they are handed holds the
    queue and the job kinds; that is the container's business, not a layer rule."""
    crossing = sorted(
        f"{module} -> {target}"
        for module, targets in chute_graph.items()
        if _within(module, "chute.upload")
        for target in targets
        # A package named only on the way to one of its modules adds nothing to read.
        if _within(target, "chute.jobs") and not any(t.startswith(target + ".") for t in targets)
    )
    assert not crossing, "\n".join(crossing)


def test_the_runtime_does_not_import_the_runner(chute_graph: Graph) -> None:
    """The entry points bind the job handler (`build_runtime(settings, handler=...)`)."""
    chain = path_to(chute_graph, "chute.runtime", "chute.jobs.runner")
    assert chain is None, " -> ".join(chain or [])


def test_the_upload_client_does_not_import_the_client_api(chute_graph: Graph) -> None:
    """An upload needs a few members of a client (`UploadClient`), not `Client`."""
    chain = path_to(chute_graph, "chute.client.upload", "chute.client.api")
    assert chain is None, " -> ".join(chain or [])


def test_no_modules_import_each_other(chute_graph: Graph) -> None:
    found = [" -> ".join(cycle) for cycle in cycles(chute_graph)]
    assert not found, "import cycles:\n" + "\n".join(found)
