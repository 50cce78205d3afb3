"""Cleaning what real counseling answers carry (links, contacts, promotion, sign-offs, repeats), strip or drop."""

from collections import Counter

import pytest

from empathy_workbook.config import ConfigError, load_config
from empathy_workbook.paths import DATA_DIR
from empathy_workbook.phases import data
from empathy_workbook.phases.data import Pair


@pytest.mark.parametrize("raw, rule, cleaned", [
    ("Walk daily. Read more at https://example.org/a?b=1. Be kind.", "url", "Walk daily. Be kind."),
    ("Walk daily. See www.example.com/help for ideas.", "url", "Walk daily."),
    ("Rest well. Email me at jane.doe@example.org with questions.", "email", "Rest well."),
    ("Rest well. Call (555) 123-4567 to talk.", "phone", "Rest well."),
    ("Rest well. Call +1 555 246 8100 today.", "phone", "Rest well."),
    ("Rest well. My office line is 555-0123.", "phone", "Rest well."),
    ("Rest well. You can call 555 0123 any evening.", "phone", "Rest well."),
    ("It helps to talk. I offer a free 15-minute consultation, so reach out.", "promotion", "It helps to talk."),
    ("It helps to talk. Please visit my website to book a session.", "promotion", "It helps to talk."),
    ("It helps to talk.\n\nBest wishes,\nDr. Jane Rivera, LMFT", "sign_off", "It helps to talk."),
    ("It helps to talk. Sincerely, Alex Moreno, LPC", "sign_off", "It helps to talk."),
    ("It helps to talk.\n\nTake care,\nThe counseling team", "sign_off", "It helps to talk."),
    ("It helps to talk.\n\nWarmly,\nYour counselor", "sign_off", "It helps to talk."),
    ("It helps to talk. Best wishes, your therapist", "sign_off", "It helps to talk."),
    ("You are not alone in this. Rest. You are not alone in this!", "repeated_sentence",
     "You are not alone in this. Rest."),
])
def test_each_artifact_rule(raw, rule, cleaned):
    counts = Counter()
    assert data.clean_text(raw, counts) == cleaned
    assert counts[rule] == 1


@pytest.mark.parametrize("text", [
    "Take care of yourself.", "Be gentle with yourself. Take care, and rest when you can.",
    "Try it 2-3 times a day for 10 minutes.", "From 2019-2021 I walked 5000 steps.",
    "Best wishes, and your therapist can help with that too.", "Best of all, it costs nothing.", "Dr. Smith said 2.5 mg",
    "I see. Thank you. I see. Thank you.",  # short repeats (under four words each) stay
])
def test_ordinary_answers_are_left_alone(text):
    assert data.clean_text(text) == text


def test_the_shipped_corpus_has_none_of_the_artifacts():
    for name in ("support_corpus.jsonl", "fall_risk_corpus_a.jsonl", "fall_risk_corpus_b.jsonl"):
        _, report = data.clean_pairs(data.load_pairs(str(DATA_DIR / name)))
        assert not any(report.rule_counts[r] for r in data.CONTENT_RULES), (name, report.rule_counts)


def test_strip_or_drop_is_configurable_and_counted_per_rule():
    pairs = [Pair("q1", "Walk daily. Call 555-987-6543 now.", "f", 1), Pair("q2", "Walk daily.", "f", 2),
             Pair("q3", "Rest.\n\nWarmly,\nSam", "f", 3)]
    kept, report = data.clean_pairs(pairs, "strip")
    assert [p.response for p in kept] == ["Walk daily.", "Walk daily.", "Rest."]
    assert report.per_rule()["phone"] == {"changed": 1, "dropped": 0}
    kept, report = data.clean_pairs(pairs, "drop")
    assert [p.row for p in kept] == [2] and report.dropped_artifacts == [("f", 1), ("f", 3)]
    per_rule = report.per_rule()
    assert per_rule["phone"]["dropped"] == 1 and per_rule["sign_off"]["dropped"] == 1
    assert set(per_rule) == {name for name, _ in data.CLEANING_RULES}  # every rule reported, zeros included
    with pytest.raises(ValueError, match="artifacts"):
        data.clean_pairs(pairs, "delete")
    with pytest.raises(ConfigError, match="data.artifacts"):
        load_config("tiny", {"data": {"artifacts": "delete"}})


def test_word_cap_drops_long_answers():
    pairs = [Pair("q", "one two three", "f", 1), Pair("q", " ".join(["w"] * 200), "f", 2)]
    assert [p.row for p in data.filter_by_words(pairs, 150)[0]] == [1]
    assert len(data.filter_by_words(pairs, 0)[0]) == 2


def test_real_preset_trains_on_answers_that_fit_its_word_budget():
    cfg = load_config("qwen3-0.6b")
    assert 0 < cfg.data.max_answer_words <= cfg.eval.word_budget
    assert {"data/fall_risk_corpus_a.jsonl", "data/fall_risk_corpus_b.jsonl"} <= set(cfg.data.mix_in)
