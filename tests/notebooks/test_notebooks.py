"""Committed notebooks are clean and runnable by the runner: no outputs, the python3 kernelspec, one
`parameters` cell of literals that papermill can read, and every parameter the runner passes declared."""

import ast
import json

import pytest

from empathy_workbook.paths import NOTEBOOKS_DIR
from empathy_workbook.pipeline import runner
from empathy_workbook.pipeline.runtime import NOTEBOOKS


def load(name):
    path = NOTEBOOKS_DIR / name
    assert path.exists(), f"{path} is missing (runtime.NOTEBOOKS lists it)"
    return path, json.loads(path.read_text(encoding="utf-8"))


def parameters_cell(nb):
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged 'parameters', found {len(cells)}"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("name", NOTEBOOKS.values())
def test_notebook_is_committed_without_outputs(name):
    _, nb = load(name)
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{name}: cells {dirty} carry outputs; run `python scripts/nbtool.py strip notebooks/{name}`"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS.values())
def test_parameters_cell_is_literals_that_papermill_reads(name):
    path, nb = load(name)
    source = parameters_cell(nb)
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first_code.get("metadata", {}).get("tags", []), f"{name}: the first code cell must be the parameters cell"
    assigned = {}
    for statement in ast.parse(source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, f"{name}: {ast.unparse(statement)}"
        assigned[statement.targets[0].id] = ast.literal_eval(statement.value)  # literals only: papermill overrides them
    # papermill's parser skips a line with a second "=" (e.g. in its comment): that parameter would be invisible.
    assert set(runner.notebook_parameters(path)) == set(assigned), f"{name}: papermill does not see every parameter"
    assert assigned["preset"] == "smollm2-135m" and assigned["run_name"] == "demo"  # make demo's default


@pytest.mark.parametrize("phase", NOTEBOOKS)
def test_runner_passes_only_declared_parameters(phase):
    path, _ = load(NOTEBOOKS[phase])
    runner.check_parameters(path, runner.runner_parameters(phase, "tiny", "ci"))
