"""Phase 1: loading, validation errors that name file/row/field, cleaning rules, dedup, grouped split."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from empathy_workbook.config import load_config
from empathy_workbook.phases import data
from empathy_workbook.phases.data import DataError, Pair


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"Context": "I fell.", "Response": "That sounds frightening."},
        {"Context": "Stairs scare me.", "Response": "Many people feel that way."}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json-lines", ".json-array", ".csv", ".parquet"])
def test_every_local_format_loads(tmp_path, suffix):
    if suffix == ".csv":
        path = tmp_path / "d.csv"
        pd.DataFrame(ROWS).to_csv(path, index=False)
    elif suffix == ".parquet":
        path = tmp_path / "d.parquet"
        pd.DataFrame(ROWS).to_parquet(path)
    elif suffix == ".json-array":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(ROWS))
    elif suffix == ".json-lines":  # the Amod file is JSON lines despite its .json name
        path = write_jsonl(tmp_path / "d.json", ROWS)
    else:
        path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    pairs = data.load_pairs(str(path))
    assert [(p.context, p.response, p.row) for p in pairs] == [(r["Context"], r["Response"], i + 1)
                                                               for i, r in enumerate(ROWS)]


def test_missing_column_names_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"Context": "hello"}])
    with pytest.raises(DataError) as err:
        data.load_pairs(str(path))
    assert err.value.row == 2 and err.value.field == "Response" and str(path) in str(err.value)


def test_non_string_value_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], {"Context": 3, "Response": "x"}])
    with pytest.raises(DataError, match=r"row 3, field 'Context': expected text, got int"):
        data.load_pairs(str(path))


def test_null_value_is_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"Context": "q", "Response": None}])
    with pytest.raises(DataError, match=r"row 1, field 'Response': missing value"):
        data.load_pairs(str(path))


def test_empty_text_is_an_error_only_when_asked(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"Context": "q", "Response": "  "}])
    assert len(data.load_pairs(str(path))) == 2  # kept here, dropped and counted by clean_pairs
    with pytest.raises(DataError, match=r"row 2, field 'Response': empty"):
        data.load_pairs(str(path), on_empty="error")


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(DataError, match="row 2"):
        data.load_pairs(str(path))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        data.load_pairs(str(tmp_path / "nope.jsonl"))


def test_unreachable_hub_id_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="local"):
        data.load_pairs("nobody/no-such-dataset-xyz")


@pytest.mark.parametrize("raw, rule, cleaned", [
    ("I\u00a0feel scared", "unicode", "I feel scared"),
    ("Take care.<br>Call me", "html", "Take care.\nCall me"),
    ("<p>Hello &amp; welcome</p>", "html", "Hello & welcome"),
    ("at night.Try a lamp", "missing_space", "at night. Try a lamp"),
    ("why?It is", "missing_space", "why? It is"),
    ("  too   many  spaces ", "whitespace", "too many spaces"),
])
def test_each_cleaning_rule(raw, rule, cleaned):
    from collections import Counter

    counts = Counter()
    assert data.clean_text(raw, counts) == cleaned
    assert counts[rule] == 1


def test_cleaning_leaves_abbreviations_and_numbers_alone():
    for text in ("Dr. Smith said 2.5 mg", "e.g. a cane", "U.S. guidance"):
        assert data.clean_text(text) == text


def test_clean_pairs_drops_empty_and_exact_duplicates():
    pairs = [Pair("q", "a", "f", 1), Pair("q", "a", "f", 2), Pair("q", "b", "f", 3), Pair("q2", " ", "f", 4)]
    kept, report = data.clean_pairs(pairs)
    assert [(p.response, p.row) for p in kept] == [("a", 1), ("b", 3)]  # same question, other answer kept
    assert report.dropped_duplicates == [("f", 2)] and report.dropped_empty == [("f", 4)]


def test_split_keeps_every_question_on_one_side():
    pairs = [Pair(f"Question {i % 40}{'?' if i % 3 else ''}", f"answer {i}", "f", i) for i in range(200)]
    train, val = data.split_by_question(pairs, 0.1, seed=7)
    train_q = {data.question_key(p.context) for p in train}
    val_q = {data.question_key(p.context) for p in val}
    assert not train_q & val_q
    assert len(train) + len(val) == 200
    assert 15 <= len(val) <= 25
    again = data.split_by_question(pairs, 0.1, seed=7)[1]
    assert [p.row for p in again] == [p.row for p in val]
    other = data.split_by_question(pairs, 0.1, seed=8)[1]
    assert {p.row for p in other} != {p.row for p in val}


def test_question_key_ignores_case_spacing_and_end_punctuation():
    assert data.question_key("  I  FELL today? ") == data.question_key("i fell today")


def test_length_filter_counts_tokens_of_the_rendered_example(tokenizer):
    pairs = [Pair("q", "short answer", "f", 1), Pair("q", "word " * 400, "f", 2)]
    lengths = data.token_lengths(pairs, tokenizer, "system")
    kept, dropped = data.filter_by_length(pairs, lengths, 128)
    assert [p.row for p in kept] == [1] and [p.row for p in dropped] == [2]
    assert lengths[0] > len(tokenizer("short answer")["input_ids"])  # template and system prompt counted


def test_shipped_corpus_prepares_cleanly(records):
    train, val = records
    assert len(train) > 5 * len(val) > 0
    assert not {r["question_key"] for r in train} & {r["question_key"] for r in val}
    first = train[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert first["completion"][0]["role"] == "assistant"


DATA_METRICS_KEYS = {
    "rows_loaded", "sources", "cleaning", "artifacts", "dropped_artifacts", "dropped_too_many_words", "dropped_empty",
    "dropped_duplicates", "dropped_too_long", "max_tokens", "train_rows", "val_rows", "train_questions",
    "val_questions", "questions_in_both", "answers_per_question", "tokens_median", "steps"}


def test_metrics_contract_is_built_from_what_prepare_records_returned():
    cfg = load_config("tiny", {"data": {"max_tokens": 100, "max_answer_words": 0}})
    train = [Pair("Q1?", "a", "s", 0), Pair("q1", "b", "s", 1), Pair("Q2", "c", "s", 2)]  # Q1 twice, as one question
    val = [Pair("Q3", "d", "s", 3)]
    too_long = [Pair("Q4", "e " * 200, "s", 4)]
    cleaned = train + val + too_long
    counts = {"loaded": 6, "dropped_empty": 1, "dropped_duplicates": 0, "dropped_artifacts": 0,
              "dropped_too_many_words": 0, "dropped_too_long": 1, "train": 3, "val": 1}
    prepared = data.Prepared(
        sources={"s": 6}, loaded=cleaned, report=data.CleanReport(), cleaned=cleaned, too_wordy=[],
        lengths=[40, 10, 30, 20, 400], too_long=too_long, train_pairs=train, val_pairs=val,
        train_records=data.to_records(train, "sys", "train"), val_records=data.to_records(val, "sys", "val"),
        counts=counts)
    metrics = data.metrics(SimpleNamespace(cfg=cfg), prepared)
    assert set(metrics) == DATA_METRICS_KEYS
    assert (metrics["train_questions"], metrics["val_questions"], metrics["questions_in_both"]) == (2, 1, 0)
    assert metrics["answers_per_question"] == {"1": 2, "2": 1}
    assert metrics["tokens_median"] == 30  # of 10, 20, 30, 40: the 400-token pair is over the cap
    assert metrics["steps"] == {"loaded": 6, "after cleaning, minus empty": 5, "minus exact duplicates": 5,
                                "≤ ∞ words": 5, "≤ 100 tokens": 4, "train": 3, "validation": 1}
    assert set(metrics["cleaning"]) == {name for name, _ in data.CLEANING_RULES}
