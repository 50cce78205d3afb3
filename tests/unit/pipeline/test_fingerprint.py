"""Phase fingerprints come from content: editing a data file, a preset field, a library module or a
notebook re-runs exactly the phases that use it and the phases downstream of them, nothing else.

The edit matrix runs the real runner (`python -m empathy_workbook run`) in a copy of the repository whose
notebooks are light stand-ins: each holds the real notebook's parameters cell and its import statements
(in a block that never executes, so the fingerprint sees the same library code without the import cost),
calls start_phase/finish_phase, and logs that it ran.
"""

import ast
import json
import modulefinder
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from empathy_workbook.paths import REPO_ROOT
from empathy_workbook.pipeline import fingerprint as fp
from empathy_workbook.pipeline.runner import PHASE_ORDER, ancestors
from empathy_workbook.pipeline.runtime import NOTEBOOKS

BODY = """
from empathy_workbook.pipeline.runtime import finish_phase, start_phase
ctx = start_phase({phase!r}, preset, run_name)
with open(ctx.paths.root / "executions.log", "a") as log:
    log.write({phase!r} + "\\n")
finish_phase(ctx, {{"value": 1.0}})
"""


def import_lines(notebook: Path) -> str:
    """The package import statements of a real notebook's code cells."""
    lines = []
    for kind, source in fp.notebook_cells(notebook):
        tree = fp._parse(source) if kind == "code" else None
        for node in ast.walk(tree) if tree is not None else []:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and fp.imported_modules(node):
                lines.append(ast.unparse(node))
    return "\n".join(dict.fromkeys(lines))


def stand_in(phase: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    real = nbformat.read(REPO_ROOT / "notebooks" / NOTEBOOKS[phase], as_version=4)
    real_params = next(c for c in real.cells if "parameters" in c.metadata.get("tags", []))  # same parameters
    # a fresh cell (the stand-in is nbformat 4.5, whose cells need an id; the committed notebooks are 4.4, without)
    params = nbformat.v4.new_code_cell(real_params.source, metadata=real_params.metadata)
    imports = import_lines(REPO_ROOT / "notebooks" / NOTEBOOKS[phase])
    # the fingerprint reads the imports from the source; not executing them keeps each kernel start cheap
    unexecuted = "if False:  # the real notebook's imports\n" + "".join(f"    {line}\n" for line in imports.splitlines())
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {phase}"), params, nbformat.v4.new_code_cell(unexecuted),
                nbformat.v4.new_code_cell(BODY.format(phase=phase))]
    return nb


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of lib/, configs/ and data/ with stand-in notebooks; the runner runs there in a subprocess."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("lib", "configs", "data"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "notebooks").mkdir()
    for phase in PHASE_ORDER:
        nbformat.write(stand_in(phase), root / "notebooks" / NOTEBOOKS[phase])
    return root


def run(repo: Path, *args: str) -> list[str]:
    """Run the pipeline in the copy; return the phases that executed this time."""
    log = repo / "artifacts" / "runs" / "t" / "executions.log"
    before = log.read_text().split() if log.exists() else []
    env = dict(os.environ, PYTHONPATH=str(repo / "lib"), EWB_ARTIFACTS=str(repo / "artifacts"))
    env.pop("EWB_REPO_ROOT", None)
    done = subprocess.run([sys.executable, "-m", "empathy_workbook", "run", "--preset", "tiny", "--run", "t", *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().split()[len(before):]


def downstream(*phases: str) -> list[str]:
    """The given phases and every phase that reads them, directly or not, in pipeline order."""
    return [p for p in PHASE_ORDER if set(ancestors(p)) & set(phases)]


def module_users(repo: Path) -> dict[str, set[str]]:
    """For each library module, the phases whose notebooks import it (directly or not)."""
    users: dict[str, set[str]] = {}
    for phase in PHASE_ORDER:
        for module in fp.notebook_modules(repo / "notebooks" / NOTEBOOKS[phase]):
            users.setdefault(module, set()).add(phase)
    return users


class PackageFinder(modulefinder.ModuleFinder):
    """The standard library's static import walker (function-level imports included), kept to this package."""

    def import_hook(self, name, caller=None, fromlist=None, level=-1):
        if level == 0 and name.split(".")[0] != fp.PACKAGE:
            return None  # third-party and standard modules are not part of a phase's library fingerprint
        return super().import_hook(name, caller, fromlist, level)


def reachable_files(notebook: Path, tmp_path: Path) -> set[Path]:
    """Files of every package module the notebook's code can import, found by modulefinder, not by fp."""
    script = tmp_path / f"{notebook.stem}.py"
    cells = [source for kind, source in fp.notebook_cells(notebook) if kind == "code"]
    script.write_text("\n".join(line for cell in cells for line in cell.splitlines()
                                if not line.lstrip().startswith(("%", "!"))), encoding="utf-8")
    finder = PackageFinder(path=[str(fp.PACKAGE_DIR.parent)])
    finder.run_script(str(script))
    return {Path(m.__file__).resolve() for name, m in finder.modules.items()
            if name.split(".")[0] == fp.PACKAGE and m.__file__}


@pytest.mark.parametrize("phase", list(NOTEBOOKS))
def test_fingerprint_covers_every_module_the_phase_can_import(phase, tmp_path):
    """A module moved into a subpackage (or imported lazily, or relatively) must stay in the fingerprint."""
    notebook = REPO_ROOT / "notebooks" / NOTEBOOKS[phase]
    covered = {path.resolve() for path in fp.module_files(fp.notebook_modules(notebook))}
    reachable = reachable_files(notebook, tmp_path)
    assert len(reachable) > 5  # the walker found the package at all
    assert reachable - covered == set(), "missing from the fingerprint"
    assert covered - reachable == set(), "in the fingerprint, but no import reaches it"


def test_relative_and_dotted_imports_resolve_inside_subpackages():
    def found(source: str, importer: str | None) -> set[str]:
        return fp.imported_modules(ast.parse(source), importer)

    pkg = fp.PACKAGE
    assert found("from ..judges.base import CRITERIA", f"{pkg}.phases.preferences") == \
        {pkg, f"{pkg}.judges", f"{pkg}.judges.base"}
    assert found("from .base import Judge", f"{pkg}.judges.rubric") == {pkg, f"{pkg}.judges", f"{pkg}.judges.base"}
    assert found("from .rubric import RubricJudge", f"{pkg}.judges") == {pkg, f"{pkg}.judges", f"{pkg}.judges.rubric"}
    assert found("from . import fingerprint as fp", f"{pkg}.pipeline.runtime") == \
        {pkg, f"{pkg}.pipeline", f"{pkg}.pipeline.fingerprint"}
    assert found(f"from {pkg}.llamacpp import inference", None) == {pkg, f"{pkg}.llamacpp", f"{pkg}.llamacpp.inference"}
    assert found(f"import {pkg}.models.tiny", None) == {pkg, f"{pkg}.models", f"{pkg}.models.tiny"}
    assert found("from .base import Judge", None) == set()  # notebook code: relative imports mean nothing
    assert found("from ...x import y", f"{pkg}.judges.base") == set()  # climbs out of the package


def append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@pytest.mark.slow
def test_edit_matrix_reruns_exactly_what_depends_on_the_edit(repo):
    assert run(repo) == PHASE_ORDER
    assert run(repo) == []  # nothing changed: everything reused

    # a data file the export's phone checks and the evaluation read: the eval suite (export answers its prompts
    # through llama-server, so it declares the eval section; registry.py)
    suite = repo / "data" / "eval_suite.jsonl"
    rows = suite.read_text(encoding="utf-8").splitlines()
    last = json.loads(rows[-1])
    last["prompt"] = last["prompt"] + " (edited)"
    suite.write_text("\n".join(rows[:-1] + [json.dumps(last)]) + "\n", encoding="utf-8")
    assert run(repo) == ["export", "eval"]

    # a data file read by name in the preferences phase: the judge-agreement pairs
    pairs = repo / "data" / "judge_pairs.jsonl"
    pairs.write_text(pairs.read_text(encoding="utf-8").replace("\n", "\n", 1), encoding="utf-8")  # same bytes
    assert run(repo) == []
    append_line(pairs, pairs.read_text(encoding="utf-8").splitlines()[0])
    assert run(repo) == downstream("preferences")

    # one row appended to a training source: the data phase and everything after it
    corpus = repo / "data" / "support_corpus.jsonl"
    append_line(corpus, json.dumps({"Context": "I slipped on the stairs and now I'm scared to go down them.",
                                    "Response": "That sounds frightening. Holding the rail helps."}))
    assert run(repo) == PHASE_ORDER

    # a preset field of one phase: that phase and what reads it
    preset = repo / "configs" / "tiny.yaml"
    preset.write_text(preset.read_text(encoding="utf-8").replace("  beta: 0.1", "  beta: 0.2"), encoding="utf-8")
    assert run(repo) == downstream("dpo")

    # a library module inside a subpackage, reached only through the judges package's lazy factory:
    # the phases whose notebooks judge (02, 05) and what reads them, nothing upstream
    users = module_users(repo)
    module = "empathy_workbook.judges.rubric"
    assert users.get(module) == {"preferences", "eval"}, users.get(module)
    append_line(repo / "lib" / fp.module_file(module).relative_to(fp.PACKAGE_DIR.parent), "# an edit")
    assert run(repo) == downstream("preferences", "eval") == ["preferences", "dpo", "export", "eval"]

    # a notebook: it and what reads its phase
    notebook = repo / "notebooks" / NOTEBOOKS["preferences"]
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A note a learner added."))
    nbformat.write(nb, notebook)
    assert run(repo) == downstream("preferences")

    assert run(repo) == []
    assert run(repo, "--force") == PHASE_ORDER


def test_config_paths_skip_sentences_too_long_to_be_a_file_name():
    """A system prompt longer than a file name may be (255 bytes) is text, not a path the phase reads: the
    operating system refuses to look it up (ENAMETOOLONG), and that must not stop the run."""
    prompt = "You are a caring assistant. " * 12  # ~340 characters, no newline
    sections = {"data": {"system_prompt": prompt, "source": "data/support_corpus.jsonl"}}
    assert fp.config_paths(sections) == [(REPO_ROOT / "data" / "support_corpus.jsonl").resolve()]
