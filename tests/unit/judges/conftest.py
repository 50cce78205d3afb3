"""Fixtures of the judge tests."""

import pytest

from empathy_workbook.config import JudgeConfig
from empathy_workbook.judges import get_judge


@pytest.fixture()
def rubric(tmp_path):
    return get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path)
