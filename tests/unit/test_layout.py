"""The library's layout: no import circle between its modules nor between its parts (subpackages and top-level
modules), and no subpackage module importing the package face (``__init__``) above it, lazy imports inside
functions included."""

import ast
import importlib.util
from pathlib import Path

import empathy_workbook

PACKAGE_DIR = Path(empathy_workbook.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def exists(name: str) -> bool:
    base = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return (base / "__init__.py").is_file() or base.with_name(base.name + ".py").is_file()


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports by name (resolved with importlib's own rules)."""
    graph = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                    if node.level else node.module
                submodules = [f"{base}.{alias.name}" for alias in node.names if exists(f"{base}.{alias.name}")]
                targets.update(submodules)
                if len(submodules) < len(node.names):  # some name is read from `base` itself
                    targets.add(base)
        graph[name] = {t for t in targets if t.split(".")[0] == PACKAGE and exists(t) and t != name}
    return graph


def part_graph() -> dict[str, set[str]]:
    """The import graph one level up: each subpackage (``phases``, ``pipeline``, ...) and each top-level module is
    one node, and a module's imports become its part's; imports inside a part are left out."""
    def part(name: str) -> str:
        parts = name.split(".")
        return parts[1] if len(parts) > 1 else name

    graph = {}
    for name, targets in import_graph().items():
        graph.setdefault(part(name), set()).update(part(t) for t in targets if part(t) != part(name))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a graph (a depth-first walk: each back edge closes one)."""
    state, found = {}, []

    def visit(name, trail):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                found.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_lib_modules_import_no_circle():
    graph = import_graph()
    # every module runs the top-level __init__ (version only); it imports nothing, so it can't close a circle
    assert graph[PACKAGE] == set()
    assert not circles(graph)


def test_lib_parts_import_no_circle():
    """Subpackages stack: a circle of parts (pipeline.report -> phases.export -> pipeline.runtime) has no module
    circle in it, yet it means one part sits both above and below another."""
    graph = part_graph()
    assert {"phases", "pipeline", "judges", "llamacpp", "models"} <= set(graph)  # the walk saw the subpackages
    assert not circles(graph)


def test_part_circles_are_found():
    """The walk itself: a circle through a top-level module and two subpackages is reported."""
    graph = {"phases": {"pipeline", "io"}, "pipeline": {"report"}, "report": {"phases"}, "io": set()}
    assert circles(graph) == [["phases", "pipeline", "report", "phases"]]


def test_no_subpackage_module_imports_the_package_face_above_it():
    """A backend takes the interface from its package's base module, never from the __init__ whose factory
    imports it (judges.rubric imports judges.base, not judges)."""
    graph = import_graph()
    upward = [(name, target) for name, targets in graph.items() for target in targets
              if target != PACKAGE and name.startswith(target + ".")]
    assert not upward, upward
