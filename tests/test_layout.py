"""The library's layout: no import circle between its modules, and no subpackage module importing the
package face (``__init__``) above it, lazy imports inside functions included."""

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


def test_lib_modules_import_no_circle():
    graph = import_graph()
    # every module runs the top-level __init__ (version only); it imports nothing, so it can't close a circle
    assert graph[PACKAGE] == set()
    state, circles = {}, []

    def visit(name, trail):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                circles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_no_subpackage_module_imports_the_package_face_above_it():
    """A backend takes the interface from its package's base module, never from the __init__ whose factory
    imports it (judges.rubric imports judges.base, not judges)."""
    graph = import_graph()
    upward = [(name, target) for name, targets in graph.items() for target in targets
              if target != PACKAGE and name.startswith(target + ".")]
    assert not upward, upward
