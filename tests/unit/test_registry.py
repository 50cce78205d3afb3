"""The phase registry is the one declaration of the pipeline: these checks fail when a phase is declared
in a way the runner, the runtime or the notebooks cannot honour."""

import json

import pytest

from empathy_workbook import registry
from empathy_workbook.config import load_config
from empathy_workbook.paths import DATA_DIR, NOTEBOOKS_DIR


@pytest.mark.parametrize("phase", registry.PHASE_LIST, ids=lambda p: p.name)
def test_each_phase_is_declared_consistently(phase):
    order = list(registry.PHASES)
    assert (NOTEBOOKS_DIR / phase.notebook).exists(), f"{phase.name}: notebook {phase.notebook} is missing"
    # A phase can only read what ran before it, or the runner would execute it before its inputs exist.
    for name in phase.inputs:
        assert name in order[: order.index(phase.name)], f"{phase.name} reads {name!r}, which is not an earlier phase"
    assert len(set(phase.inputs)) == len(phase.inputs)
    sections = set(load_config("tiny").to_dict())
    assert set(phase.sections) <= sections, f"{phase.name}: unknown config sections {set(phase.sections) - sections}"
    for name in phase.data_files:
        assert (DATA_DIR / name).exists(), f"{phase.name}: data file {name} is missing"
    assert phase.duration.cpu_default and phase.duration.cpu_tiny and phase.duration.gpu_real


def test_notebooks_are_numbered_in_pipeline_order():
    # The learner runs 00, 01, ... in file order; that order must be the registry's.
    numbers = [p.notebook.split("_", 1)[0] for p in registry.PHASE_LIST]
    assert numbers == [f"{i:02d}" for i in range(len(numbers))]


@pytest.mark.parametrize("phase", registry.PHASE_LIST, ids=lambda p: p.name)
def test_notebook_starts_the_phase_it_is_registered_for(phase):
    nb = json.loads((NOTEBOOKS_DIR / phase.notebook).read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert f'start_phase("{phase.name}"' in code


def test_upstream_walks_indirect_inputs_in_order():
    # eval reads preferences only through dpo; the walk must still find it.
    assert registry.upstream("eval") == ["data", "sft", "preferences", "dpo", "export"]
    assert registry.upstream("data") == []
    assert registry.upstream("sft", include_self=True) == ["data", "sft"]
    with pytest.raises(ValueError):
        registry.upstream("nope")
