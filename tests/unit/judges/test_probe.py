"""judges/probe.py: the ways a judge is known to be fooled (master keys, length, criteria order), measured."""

import pandas as pd
import pytest

from empathy_workbook.config import JudgeConfig
from empathy_workbook.judges import get_judge
from empathy_workbook.judges import probe as judge_probe


def test_master_keys_land_at_the_floor_with_the_rubric(tmp_path):
    judge = get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path)
    questions = ["I fell in the garden last week and now I'm scared to go outside. What should I do?",
                 "My husband hit his head when he fell and seems confused.",
                 "I feel embarrassed about using a walker."]
    rows = judge_probe.master_key_rows(judge, questions)
    assert len(rows) == len(questions) * len(judge_probe.MASTER_KEYS)
    flagged = [(r["master_key"], r["question"], r["overall"]) for r in rows if r["flagged"]]
    assert not flagged, flagged
    assert judge_probe.floor_rate(rows) == 1.0


def test_probe_summary_and_table_for_the_rubric(tmp_path):
    judge = get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path)
    q = "I'm scared of falling again."
    good = "That sounds really frightening, and it makes sense to feel that way. You could ask your doctor " \
           "about a balance class, and a night light may help."
    pairs = [(q, good, "Falls happen."), (q, good + " Take care.", "ok"), (q, good, good[:40])]
    summary, rows = judge_probe.probe_judge(judge, [q], pairs, gap=2.0)
    assert summary["master_key_floor_rate"] == 1.0 and summary["scoring"] == "rubric"
    assert summary["stability"]["within_1_point"] == 1.0  # the rubric scores criteria independently
    assert summary["equal_length"]["pairs"] == 3
    table = judge_probe.robustness_table([summary], rows)
    assert "master_key_floor_rate" in table.index and set(judge_probe.MASTER_KEYS) <= set(table.index)


def test_probe_judges_keys_summaries_by_name_and_measures_length_on_a_given_table(tmp_path):
    judge = get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path)
    q = "I'm scared of falling again."
    good = "That sounds really frightening, and it makes sense to feel that way. You could ask your doctor " \
           "about a balance class, and a night light may help."
    pairs = [(q, good, "Falls happen."), (q, good + " Take care.", "ok")]
    # the longer the answer, the lower its score: a correlation the sampled pairs (long = good) cannot give
    table = pd.DataFrame({"answer": ["a", "a b", "a b c"], "score": [9.0, 5.0, 1.0]})
    summaries, rows = judge_probe.probe_judges({"main": judge, "second": judge}, [q], pairs, gap=2.0,
                                               length_tables={"second": table})
    assert list(summaries) == ["main", "second"] and len(rows) == 2 * len(judge_probe.MASTER_KEYS)
    assert summaries["second"]["length_score_correlation"] == pytest.approx(-1.0)
    assert summaries["main"] == judge_probe.probe_judge(judge, [q], pairs, gap=2.0)[0]
    assert summaries["main"]["length_score_correlation"] > 0


def test_length_correlation_and_equal_length_cut():
    assert judge_probe.length_score_correlation(["a", "a b", "a b c", "x", "y"], [1, 2, 3, None, float("nan")]) \
        == pytest.approx(1.0)  # unscored answers (None from the judge, NaN from a table) are left out
    assert judge_probe.cut_words("one two  three", 2) == "one two"
