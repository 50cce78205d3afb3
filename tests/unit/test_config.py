"""Presets load into validated dataclasses; bad keys and values fail with a message naming them."""

import tomllib

import pytest
import yaml

from empathy_workbook.config import ConfigError, JudgeConfig, PreferenceConfig, load_config
from empathy_workbook.paths import REPO_ROOT


def test_tiny_preset_is_the_cpu_default():
    cfg = load_config("tiny")
    assert cfg.model.name_or_path == "tiny"
    assert cfg.preferences.judge.backend == "rubric"
    assert cfg.preset == "tiny"


def test_unknown_key_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sft": {"train": {"epochz": 2}}}))
    with pytest.raises(ConfigError, match=r"sft\.train\.epochz"):
        load_config(str(bad))


def test_impossible_value_says_what_to_change():
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config("tiny", {"data": {"val_fraction": 0.9}})
    with pytest.raises(ConfigError, match="judge.model"):
        load_config("tiny", {"preferences": {"judge": {"backend": "transformers", "model": ""}}})


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="batch_size"):
        load_config("tiny", {"sft": {"train": {"batch_size": "four"}}})


def test_a_single_loss_may_be_named_on_its_own_but_other_lists_stay_lists():
    """dpo.loss_type opts in (its field metadata) to reading "ipo" as ["ipo"]; a list field that does not opt in,
    like data.mix_in, still refuses a bare string rather than treating a file name as a list of characters."""
    assert load_config("tiny", {"dpo": {"loss_type": "ipo"}}).dpo.loss_type == ["ipo"]
    assert load_config("tiny", {"dpo": {"loss_type": ["sigmoid", "sft"]}}).dpo.loss_type == ["sigmoid", "sft"]
    with pytest.raises(ConfigError, match=r"data\.mix_in: expected list"):
        load_config("tiny", {"data": {"mix_in": "data/boundary_corpus.jsonl"}})


def test_none_overrides_keep_the_preset():
    assert load_config("tiny", {"data": {"max_tokens": None}}).data.max_tokens == load_config("tiny").data.max_tokens


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("no-such-preset")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"]) \
        | set(project["optional-dependencies"]["lab"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) == wanted
    assert "python=3.11" in env["dependencies"]


def test_gitignore_keeps_lib_and_ignores_artifacts():
    import subprocess

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0

    assert not ignored("lib/empathy_workbook/config.py")
    assert ignored("artifacts/runs/x/metrics.json")


def test_judge_config_validates_scoring_and_layout():
    assert JudgeConfig().scoring == "json"
    assert JudgeConfig(backend="transformers", model="m", scoring="probability").scoring == "probability"
    with pytest.raises(ConfigError, match="judge.scoring='logits'"):
        JudgeConfig(scoring="logits")
    with pytest.raises(ConfigError, match="probability_layout"):
        JudgeConfig(probability_layout="tree")


def test_second_judges_and_filter_with_default_to_todays_behaviour():
    cfg = load_config("tiny")
    assert cfg.preferences.filter_with == "judge"
    assert cfg.preferences.second_judge.backend == "rubric" and cfg.eval.second_judge.backend == "rubric"
    with pytest.raises(ConfigError, match="filter_with='rubric'"):
        PreferenceConfig(filter_with="rubric")
    over = load_config("tiny", {"preferences": {"filter_with": "second_judge",
                                                "second_judge": {"backend": "rubric", "scoring": "probability"}}})
    assert over.preferences.filter_with == "second_judge" and over.preferences.second_judge.scoring == "probability"
