"""What a phase's result was made from, as one hash: a result is reused only when all of it is unchanged.

A phase's fingerprint covers
- its resolved config sections and the global seed;
- the bytes of every local file or folder its config names (data sources, mix-ins, the eval suite, a
  local model or judge folder, ...), plus fixed inputs a phase reads by name (the judge-agreement pairs)
  and, for the embedded tiny model, the corpus it is built from;
- the source of every library module its notebook imports, directly or through other modules (so an
  edit to ``phases/export.py`` re-runs export and what reads it, not the data phase), and package data files
  (templates) that those modules name;
- its notebook's cells (code and text, not outputs);
- the fingerprints of the phases it reads (so a change upstream reaches everything downstream).

Names and versions are never used in place of content: editing one row of a data file changes the hash.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from ..io import sha256_file, sha256_text
# Files a phase reads by a fixed name rather than through its config (relative to data/), declared per phase.
from ..registry import FIXED_DATA_FILES

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # this file is <package>/pipeline/fingerprint.py
PACKAGE = PACKAGE_DIR.name  # "empathy_workbook"

_file_hashes: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered for this process while its size and mtime stay the same."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        _file_hashes[key] = sha256_file(path)
    return _file_hashes[key]


def path_digest(path: Path) -> str:
    """Content hash of a file, or of a folder's files (relative names + bytes; hidden files ignored)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return sha256_text(*(f"{p.relative_to(path).as_posix()}={file_digest(p)}" for p in files))


# ------------------------------------------------------------------------------ notebooks


def notebook_cells(path: Path) -> list[tuple[str, str]]:
    """(cell type, source) of every cell: what the notebook does, without outputs or metadata."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(c.get("cell_type", ""), "".join(c.get("source", ""))) for c in nb.get("cells", [])]


def notebook_digest(path: Path) -> str:
    """Hash of a notebook's cell types and sources: outputs, execution counts and metadata don't count."""
    return sha256_text(json.dumps(notebook_cells(path)))[:16]


# ------------------------------------------------------------------------------ library modules


def _parse(source: str) -> ast.AST | None:
    # notebook cells may hold IPython magics (%matplotlib, !ls): drop those lines before parsing
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def module_file(name: str) -> Path | None:
    """The source file of one of this package's modules, by dotted name (a package's is its __init__.py)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.parent / f"{base.name}.py"):
        if path.is_file():
            return path
    return None


def _is_package(name: str) -> bool:
    path = module_file(name)
    return path is not None and path.name == "__init__.py"


def _import_base(node: ast.ImportFrom, importer: str | None) -> str | None:
    """The absolute module a `from ... import` reads from; relative ones resolve against the importer."""
    if node.level == 0:
        return node.module
    if importer is None:  # notebook code: a relative import means nothing there
        return None
    package = importer if _is_package(importer) else importer.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):  # climbs above the top-level package
        return None
    base = ".".join(parts[:len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(tree: ast.AST, importer: str | None = None) -> set[str]:
    """Dotted names of this package's modules an AST imports, with the packages above them.

    importer: the dotted name of the module the AST is the source of, so that relative imports
    (``from ..judges.base import X``, ``from . import fingerprint``) resolve; None for notebook code.
    ``from pkg import name`` counts ``pkg.name`` when that is a module, and ``pkg`` itself either way.
    Parent packages count because importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too.
    """
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, importer)
            if base is not None:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    modules = {name for name in found if module_file(name) is not None}
    return modules | {name.rsplit(".", depth)[0] for name in modules for depth in range(1, name.count(".") + 1)}


def module_closure(roots: set[str]) -> set[str]:
    """The modules in `roots` and every package module they import, however deep (lazy imports included)."""
    seen, todo = set(), [PACKAGE, *roots]  # every import of the package runs its __init__.py
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        tree = _parse(path.read_text(encoding="utf-8"))
        if tree is not None:
            todo.extend(imported_modules(tree, importer=name) - seen)
    return seen


def notebook_modules(notebook: Path) -> set[str]:
    """Package modules a notebook's code cells import, with everything those import in turn."""
    roots = set()
    for kind, source in notebook_cells(notebook):
        tree = _parse(source) if kind == "code" else None
        if tree is not None:
            roots |= imported_modules(tree)
    return module_closure(roots)


def module_files(modules: set[str]) -> list[Path]:
    """The source files of these modules, in a stable order."""
    return sorted(module_file(m) for m in modules)


def package_data_files(modules: set[str]) -> list[Path]:
    """Non-Python package files (templates) whose file name appears in one of these modules' source."""
    sources = "\n".join(path.read_text(encoding="utf-8") for path in module_files(modules))
    files = sorted(p for p in PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                   and "__pycache__" not in p.parts)
    return [p for p in files if p.name in sources or p.stem in sources]


def library_digest(modules: set[str]) -> dict[str, str]:
    """Content hash of each module (and the package data it names): {path inside the package: sha256}."""
    files = module_files(modules) + package_data_files(modules)
    return {p.relative_to(PACKAGE_DIR).as_posix(): file_digest(p) for p in files}


# ------------------------------------------------------------------------------ input files


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def config_paths(sections: dict) -> list[Path]:
    """Every string in the config sections that names an existing local file or folder."""
    from ..config import data_path

    found = set()
    for text in _strings(sections):
        if not text or "\n" in text or len(text) > 4096:
            continue
        try:
            path = data_path(text)
            exists = path.exists()
        except OSError:  # e.g. a system prompt longer than a file name may be: a sentence, not a file
            continue
        if exists and path.resolve() != Path(os.sep):
            found.add(path.resolve())
    return sorted(found)


def phase_input_files(phase: str, cfg, sections: dict) -> list[Path]:
    """The local files this phase reads that no phase of the run wrote."""
    from ..config import TINY_MODEL
    from ..paths import DATA_DIR

    files = set(config_paths(sections))
    files.update((DATA_DIR / name).resolve() for name in FIXED_DATA_FILES.get(phase, ()))
    if "model" in sections and cfg.model.name_or_path == TINY_MODEL:
        from ..models.tiny import corpus_paths  # the tiny model is built from these, so they shape its weights

        files.update(p.resolve() for p in corpus_paths())
    return sorted(p for p in files if p.exists())


def input_digests(files: list[Path]) -> dict[str, str]:
    from ..paths import REPO_ROOT

    def name(p: Path) -> str:
        try:
            return p.relative_to(REPO_ROOT.resolve()).as_posix()
        except ValueError:
            return str(p)

    return {name(p): path_digest(p) for p in files}
