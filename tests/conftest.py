"""Shared fixtures: the embedded tiny model (built once, cached under artifacts/cache/) and its data."""

import pytest

from empathy_workbook.config import load_config


@pytest.fixture(scope="session")
def tiny_cfg():
    """The tiny preset, resolved."""
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_path():
    """Folder of the embedded tiny Qwen3 (built on first use, then cached)."""
    from empathy_workbook.models import resolve_model_path

    return resolve_model_path("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    from empathy_workbook.models import load_tokenizer

    return load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def records(tiny_cfg, tokenizer):
    """(train_records, val_records) from the shipped corpus, as phase 1 writes them."""
    from empathy_workbook.data import prepare_records

    train, val, _ = prepare_records(tiny_cfg.data, tokenizer)
    return train, val


@pytest.fixture(scope="session")
def tiny_run():
    """A finished tiny-preset run (artifacts/runs/ci-tiny) that the browser and exercise tests build on.

    Made with the runner, which skips unchanged phases: a second `make test` reuses it in seconds.
    Tests copy its phases into runs of their own (guide.fork_run) instead of writing into it.
    """
    from empathy_workbook.paths import RunPaths
    from empathy_workbook.runner import run_pipeline

    summary = run_pipeline("tiny", "ci-tiny", progress=False)
    assert summary["status"] == "ok", summary["failure"]
    return RunPaths.for_run("ci-tiny")
