"""Phase 3: degradations, resumable candidate generation (rejected.py), the gap filter, retention and judge agreement."""

import json
from types import SimpleNamespace

import pytest

from empathy_workbook.config import ConfigError, JudgeConfig, PreferenceConfig, SamplingConfig, load_config
from empathy_workbook.judges import CRITERIA, JudgeResult, get_judge
from empathy_workbook.phases import preferences as prefs
from empathy_workbook.phases import rejected

# ---------------------------------------------------------------------------------------------
# Degradations
# ---------------------------------------------------------------------------------------------

TEXT = "It sounds hard. Try a night light by the bed tonight. Ask your doctor about balance classes."


def test_truncate_keeps_whole_words_within_70_percent():
    text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj"  # 49 characters: the cut may end at 34
    assert rejected.truncate_text(text) == "aaaa bbbb cccc dddd eeee ffff gggg"
    assert rejected.truncate_text(text, 0.5) == "aaaa bbbb cccc dddd eeee"  # 24 characters fit in 24.5
    assert rejected.truncate_text(text, 0.45) == "aaaa bbbb cccc dddd"  # 22.05: "eeee" would end at 24
    cut = rejected.truncate_text(TEXT)
    assert TEXT.startswith(cut) and TEXT[len(cut)] == " "  # ends at a word boundary
    assert len(cut) <= 0.7 * len(TEXT) < len(cut) + 1 + len(TEXT[len(cut) + 1:].split()[0])  # the next word would not fit


def test_truncate_edge_cases():
    assert rejected.truncate_text("") == ""
    assert rejected.truncate_text("Supercalifragilistic") == "Supercalifragilistic"  # one word: nothing to cut at
    assert rejected.truncate_text("  padded words here now  ") == "padded words"  # 21 stripped characters: 14.7


def test_drop_first_sentence():
    assert rejected.drop_first_sentence(TEXT) == "Try a night light by the bed tonight. Ask your doctor about balance classes."
    assert rejected.drop_first_sentence("I'm sorry! That is scary? Yes.") == "That is scary? Yes."
    assert rejected.drop_first_sentence('He said "stop." Then he left.') == "Then he left."
    assert rejected.drop_first_sentence("Only one sentence here.") == "Only one sentence here."  # unchanged
    assert rejected.drop_first_sentence("No full stop at all") == "No full stop at all"


def test_apply_degradation():
    assert rejected.apply_degradation(f"  {TEXT} ", "none") == TEXT
    assert rejected.apply_degradation(TEXT, "low_repetition_penalty") == TEXT  # acts at sampling time, not on text
    assert rejected.apply_degradation(TEXT, "truncate") == rejected.truncate_text(TEXT)
    assert rejected.apply_degradation(TEXT, "drop_first_sentence") == rejected.drop_first_sentence(TEXT)
    with pytest.raises(ValueError, match="unknown degradation"):
        rejected.apply_degradation(TEXT, "shuffle")


def test_degradation_assignment_follows_the_rates_and_is_stable():
    cfg = PreferenceConfig(truncate_rate=0.2, drop_first_sentence_rate=0.3, low_repetition_penalty_rate=0.1)
    ids = [f"train-{i}" for i in range(4000)]
    drawn = [rejected.assign_degradation(i, cfg, 7) for i in ids]
    shares = {name: drawn.count(name) / len(ids) for name in rejected.DEGRADATIONS}
    for name, rate in (("truncate", 0.2), ("drop_first_sentence", 0.3), ("low_repetition_penalty", 0.1),
                       ("none", 0.4)):
        assert abs(shares[name] - rate) < 0.03, shares
    assert drawn == [rejected.assign_degradation(i, cfg, 7) for i in reversed(ids)][::-1]  # order does not matter
    assert drawn != [rejected.assign_degradation(i, cfg, 8) for i in ids]  # the seed does
    none = PreferenceConfig()
    assert {rejected.assign_degradation(i, none, 7) for i in ids[:200]} == {"none"}


def test_degradation_rates_must_fit_in_one_whole():
    with pytest.raises(ConfigError, match="add up to 1.2"):
        PreferenceConfig(truncate_rate=0.6, drop_first_sentence_rate=0.6)
    with pytest.raises(ConfigError, match="max_val_prompts"):
        PreferenceConfig(max_val_prompts=0)


# ---------------------------------------------------------------------------------------------
# Generation (scripted model) and resume
# ---------------------------------------------------------------------------------------------

def record(i, answer="That sounds hard. Try a night light. Ask your doctor."):
    return {"id": f"train-{i:03d}", "question_key": f"q{i}", "source": "t", "source_row": i,
            "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"Question {i}?" + "x" * i}],
            "completion": [{"role": "assistant", "content": answer}]}


class FakeGenerate:
    """Stands in for models.generate: records what it was asked, answers deterministically."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, tokenizer, conversations, sampling, repetition_penalty=None, progress=True, desc=""):
        self.calls.append({"n": len(conversations), "penalty": repetition_penalty, "seed": sampling.seed,
                           "temperature": sampling.temperature})
        return [{"text": f"Sampled for {c[-1]['content'][:12]}. Second sentence here.", "ended_on_eos": True,
                 "new_tokens": 9} for c in conversations]


@pytest.fixture()
def fake_generate(monkeypatch):
    fake = FakeGenerate()
    monkeypatch.setattr(rejected, "generate", fake)
    return fake


CFG = PreferenceConfig(sampling=SamplingConfig(temperature=1.5, top_p=1.0, top_k=0, batch_size=2, seed=5),
                       truncate_rate=0.25, drop_first_sentence_rate=0.25, low_repetition_penalty_rate=0.25)


def test_candidates_record_their_degradation_and_penalty(fake_generate, tmp_path):
    records = [record(i) for i in range(40)]
    rows = rejected.generate_candidates(None, None, records, CFG, tmp_path / "c.jsonl", "train", "s1", progress=False)
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    kinds = {r["degradation"] for r in rows}
    assert kinds == set(rejected.DEGRADATIONS)
    for r in rows:
        assert r["degradation"] == rejected.assign_degradation(r["id"], CFG, CFG.sampling.seed)
        assert r["rejected"] == rejected.apply_degradation(r["sampled"], r["degradation"])
        assert r["repetition_penalty"] == (0.9 if r["degradation"] == "low_repetition_penalty" else 1.0)
        assert r["chosen"] == records[0]["completion"][0]["content"] and r["prompt"] == record(int(r["id"][-3:]))["prompt"]
    # the low penalty really reached the sampler, only for those rows, and the temperature is the preset's
    low_rows = sum(r["degradation"] == "low_repetition_penalty" for r in rows)
    assert sum(c["n"] for c in fake_generate.calls if c["penalty"] == 0.9) == low_rows
    assert sum(c["n"] for c in fake_generate.calls if c["penalty"] is None) == len(rows) - low_rows
    assert {c["temperature"] for c in fake_generate.calls} == {1.5}
    assert len({c["seed"] for c in fake_generate.calls}) == len(fake_generate.calls)  # every call seeded apart


def test_rerun_skips_done_prompts_and_resumes_an_interrupted_run(fake_generate, tmp_path):
    path = tmp_path / "candidates.jsonl"
    records = [record(i) for i in range(12)]
    full = rejected.generate_candidates(None, None, records, CFG, path, "train", "s1", progress=False)
    calls = len(fake_generate.calls)
    again = rejected.generate_candidates(None, None, records, CFG, path, "train", "s1", progress=False)
    assert len(fake_generate.calls) == calls and again == full  # nothing generated twice
    # an interrupted run: only 5 rows (and half a line) made it to disk
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    fake_generate.calls.clear()
    resumed = rejected.generate_candidates(None, None, records, CFG, path, "train", "s1", progress=False)
    assert sum(c["n"] for c in fake_generate.calls) == 7
    assert [r["id"] for r in resumed] == [r["id"] for r in records]
    # the validation split lives in the same file without colliding
    val = [dict(record(i), id=f"val-{i:03d}") for i in range(3)]
    rejected.generate_candidates(None, None, val, CFG, path, "val", "s1", progress=False)
    assert sum(1 for line in path.read_text().splitlines() if line.strip().startswith("{")) >= 15


def test_changed_settings_regenerate_instead_of_mixing(fake_generate, tmp_path):
    path = tmp_path / "candidates.jsonl"
    records = [record(i) for i in range(4)]
    rejected.generate_candidates(None, None, records, CFG, path, "train", "s1", progress=False)
    fake_generate.calls.clear()
    rows = rejected.generate_candidates(None, None, records, CFG, path, "train", "s2", progress=False, log=lambda m: None)
    assert sum(c["n"] for c in fake_generate.calls) == 4 and {r["settings"] for r in rows} == {"s2"}
    assert len(path.read_text().splitlines()) == 4


def test_settings_key_changes_with_model_sampling_and_rates():
    base = rejected.settings_key(CFG, "m")
    assert base == rejected.settings_key(CFG, "m")
    assert base != rejected.settings_key(CFG, "other-model")
    assert base != rejected.settings_key(PreferenceConfig(sampling=CFG.sampling), "m")


def test_tiny_model_samples_reproducibly(tiny_path, tokenizer, tmp_path):
    from empathy_workbook.models.loading import load_causal_lm

    model = load_causal_lm(tiny_path)
    records = [record(i) for i in range(3)]
    cfg = PreferenceConfig(sampling=SamplingConfig(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=8,
                                                   batch_size=2, seed=3), low_repetition_penalty_rate=0.5)
    a = rejected.generate_candidates(model, tokenizer, records, cfg, tmp_path / "a.jsonl", "train", "s", progress=False)
    b = rejected.generate_candidates(model, tokenizer, records, cfg, tmp_path / "b.jsonl", "train", "s", progress=False)
    assert [r["sampled"] for r in a] == [r["sampled"] for r in b]
    assert all(0 < r["new_tokens"] <= 8 for r in a)


# ---------------------------------------------------------------------------------------------
# Filter and retention
# ---------------------------------------------------------------------------------------------

def cand(i, rejected="Meh.", chosen="It sounds hard. Try a light.", split="train", degradation="none"):
    return {"id": f"{split}-{i}", "split": split, "question_key": f"q{i}",
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"}],
            "chosen": chosen, "rejected": rejected, "degradation": degradation}


def score(i, chosen, rejected, split="train"):
    gap = None if chosen is None or rejected is None else round(chosen - rejected, 6)
    return {"id": f"{split}-{i}", "split": split, "judge": "j", "chosen_overall": chosen, "rejected_overall": rejected,
            "chosen_criteria": {}, "rejected_criteria": {}, "gap": gap}


def test_filter_statuses_and_retention_arithmetic():
    candidates = [cand(0), cand(1), cand(2), cand(3), cand(4, rejected=""), cand(5, rejected=" It sounds  hard. Try a light."),
                  cand(6), cand(7), cand(8)]
    scores = [score(0, 8, 3), score(1, 8, 6), score(2, 6.1, 4.1), score(3, 4, 7), score(4, 8, 1), score(5, 8, 8),
              score(6, None, 3), score(7, 8, None), score(8, 9, 2)]
    rows, report = prefs.filter_pairs(candidates, scores, gap=2.0)
    assert [r["status"] for r in rows] == ["kept", "kept", "kept", "small_gap", "empty", "identical",
                                           "unscored", "unscored", "kept"]
    assert (report.candidates, report.unscored, report.scored, report.kept) == (9, 2, 7, 4)
    assert (report.empty, report.identical, report.small_gap) == (1, 1, 1)
    assert report.retention == pytest.approx(4 / 7)
    assert report.as_dict()["retention"] == pytest.approx(4 / 7)
    _, strict = prefs.filter_pairs(candidates, scores, gap=3.0)
    assert strict.kept == 2 and strict.small_gap == 3  # 8-6 and 6.1-4.1 now fall short too
    _, empty = prefs.filter_pairs([], [], gap=2.0)
    assert empty.retention is None


def test_scores_come_from_one_judge_call_per_answer(tmp_path):
    judge = get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path)
    candidates = [cand(0, rejected="ok"), cand(1, rejected="Falls happen, just be careful.")]
    rows = prefs.score_candidates(judge, candidates, progress=False)
    assert judge.stats["requested"] == 4 and all(r["gap"] is not None for r in rows)
    assert rows[0]["gap"] == pytest.approx(rows[0]["chosen_overall"] - rows[0]["rejected_overall"])


def test_missing_scores_are_an_error():
    with pytest.raises(KeyError, match="train-0"):
        prefs.filter_pairs([cand(0)], [], gap=2)


@pytest.mark.parametrize("retention, expected", [(0.7, None), (0.6, None), (0.8, None), (0.3, "temperature"),
                                                 (0.95, "raise the gap"), (None, "parse failures")])
def test_retention_advice(retention, expected):
    advice = prefs.retention_advice(retention, gap=2)
    assert advice is None if expected is None else expected in advice


def test_retention_advice_blames_a_judge_that_cannot_separate_clear_pairs():
    assert "stronger judge" in prefs.retention_advice(0.4, gap=2, judge_clears_gap=0.3)
    assert "stronger judge" not in prefs.retention_advice(0.4, gap=2, judge_clears_gap=0.9)
    assert prefs.retention_advice(0.7, gap=2, judge_clears_gap=0.3) is None


def test_kept_pairs_are_written_in_trl_conversational_preference_format(tmp_path):
    rows, _ = prefs.filter_pairs([cand(0), cand(1)], [score(0, 9, 2), score(1, 5, 5)], gap=2)
    assert prefs.write_pairs(tmp_path / "pairs.jsonl", rows) == 1
    (pair,) = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert pair["chosen"] == [{"role": "assistant", "content": "It sounds hard. Try a light."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Meh."}]
    assert (pair["chosen_score"], pair["rejected_score"], pair["gap"]) == (9, 2, 7)


def test_summaries():
    rows, _ = prefs.filter_pairs([cand(0, rejected="a b"), cand(1, rejected="a b c d"), cand(2, degradation="truncate")],
                                 [score(0, 9, 2), score(1, 5, 5), score(2, None, 1)], gap=2)
    lengths = prefs.length_summary(rows)
    assert lengths["chosen_words_mean"] == 6.0 and lengths["rejected_words_mean"] == 3.0
    assert lengths["length_score_correlation_rejected"] is None  # two points: undefined, not made up
    per = prefs.by_degradation(rows)
    assert per["none"] == {"pairs": 2, "kept": 1, "retention": 0.5, "rejected_mean": 3.5}
    assert per["truncate"]["retention"] is None


def test_choose_records_is_seeded_and_bounded():
    records = [record(i) for i in range(30)]
    picked = rejected.choose_records(records, 10, seed=1)
    assert len(picked) == 10 and picked == rejected.choose_records(records, 10, seed=1)
    assert picked != rejected.choose_records(records, 10, seed=2)
    assert [r["id"] for r in picked] == sorted(r["id"] for r in picked)  # file order kept
    assert rejected.choose_records(records, -1, seed=1) == records


# ---------------------------------------------------------------------------------------------
# Judge agreement
# ---------------------------------------------------------------------------------------------

class TableJudge:
    """Returns fixed overall scores by response text."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def score(self, prompts, responses, progress=True):
        return [JudgeResult(self.table[r], {}, self.table[r] is None, "") for r in responses]


def test_agreement_counts_ties_and_failures_separately():
    pairs = [{"id": str(i), "prompt": "p", "better": f"b{i}", "worse": f"w{i}", "flaw": "cold"} for i in range(5)]
    judge = TableJudge({"b0": 8, "w0": 3, "b1": 5, "w1": 5, "b2": 2, "w2": 6, "b3": None, "w3": 1, "b4": 7, "w4": 6.5})
    summary, rows = prefs.judge_agreement(judge, pairs, progress=False, gap=2)
    assert [r["outcome"] for r in rows] == ["agree", "tie", "disagree", "parse_failure", "agree"]
    low, high = summary.pop("agreement_low"), summary.pop("agreement_high")
    assert summary == {"judge": "table", "pairs": 5, "agree": 2, "ties": 1, "disagree": 1, "parse_failures": 1,
                       "agreement": 0.5, "mean_margin": 0.375, "clears_gap": 1}  # margins 5, 0, -4, 0.5
    assert (low, high) == (0.15, 0.85)  # Wilson's 95 % interval of 2 agreements in 4 scored pairs


def test_judge_clears_gap_is_the_filtering_judges_share():
    agreement = {"main": {"pairs": 10, "parse_failures": 2, "clears_gap": 4},
                 "rubric": {"pairs": 10, "parse_failures": 0, "clears_gap": 9}}
    assert prefs.judge_clears_gap(agreement, "judge", "main", "rubric") == 0.5  # 4 of the 8 it scored
    assert prefs.judge_clears_gap(agreement, "second_judge", "main", "rubric") == 0.9
    assert prefs.judge_clears_gap(agreement, "second_judge", "main", "other") == 0.5  # not measured: the main one's
    assert prefs.judge_clears_gap({"main": {"pairs": 3, "parse_failures": 3, "clears_gap": 0}},
                                  "judge", "main", "rubric") is None


PREFERENCE_METRICS_KEYS = {
    "prompts", "generated", "judged", "parse_failures", "kept", "retention", "retention_range", "retention_advice",
    "gap_threshold", "filter", "heldout", "judge", "judge_scoring", "judge_forward_passes_per_answer",
    "master_key_floor_rate", "length_score_correlation", "judge_robustness", "second_judge", "second_judge_scoring",
    "filter_with", "judges_compared", "judge_cache_hits", "judge_retries", "judge_agreement", "judges_not_run",
    "criteria_means", "by_degradation", "lengths", "temperature", "ended_on_eos", "think_leaks", "sampling_seconds",
    "judging_seconds"}


def judged(i, chosen, rejected, split="train"):
    """score() as score_candidates writes it: criteria and parse flags included."""
    return {**score(i, chosen, rejected, split), "chosen_parse_failed": chosen is None,
            "rejected_parse_failed": rejected is None, "chosen_criteria": {c: 5 for c in CRITERIA},
            "rejected_criteria": {c: 3 for c in CRITERIA}}


def test_metrics_contract_is_built_from_the_phase_results():
    cfg = load_config("tiny", {"preferences": {"gap": 2, "filter_with": "judge"}})
    train = [{**cand(i, rejected=f"Meh {i}."), "ended_on_eos": i != 2, "think_leak": False} for i in range(3)]
    val = [{**cand(0, split="val"), "ended_on_eos": True, "think_leak": True}]
    scores = [judged(0, 9, 2), judged(1, 5, 5), judged(2, None, 4), judged(0, 8, 3, "val")]
    train_rows, report = prefs.filter_pairs(train, scores[:3], 2)
    val_rows, val_report = prefs.filter_pairs(val, scores[3:], 2)
    main, rubric = SimpleNamespace(name="main", scoring="probability"), SimpleNamespace(name="rubric", scoring="rubric")
    metrics = prefs.metrics(
        SimpleNamespace(cfg=cfg), train_records=[{}] * 3, val_records=[{}], train_candidates=train,
        val_candidates=val, scores=scores, train_rows=train_rows, val_rows=val_rows, report=report,
        val_report=val_report, judge=main, second_judge=rubric, passes_per_answer=1,
        scoring_stats={"cache_hits": 3}, robustness={"main": {"master_key_floor_rate": 0.75}},
        judges_compared={}, agreement={"main": {"pairs": 10, "parse_failures": 0, "clears_gap": 2}}, not_run={},
        sampling_seconds=1.234, judging_seconds=2.0)
    assert set(metrics) == PREFERENCE_METRICS_KEYS
    assert (metrics["kept"], metrics["retention"], metrics["parse_failures"]) == (1, 0.5, 1)
    assert metrics["heldout"] == {"prompts": 1, "generated": 1, "judged": 2, "parse_failures": 0, "kept": 1,
                                  "retention": 1.0}
    # retention 50 % with a judge that separates 2 of 10 clear pairs: the advice blames the judge first
    assert "stronger judge" in metrics["retention_advice"]
    assert (metrics["ended_on_eos"], metrics["think_leaks"]) == (3, 1)
    assert (metrics["judge_cache_hits"], metrics["judge_retries"], metrics["sampling_seconds"]) == (3, 0, 1.23)
    assert metrics["criteria_means"]["overall"] == {"chosen": 7.333, "rejected": 3.333}  # the three scored pairs


def test_judge_pairs_file_is_validated(tmp_path):
    path = tmp_path / "judge_pairs.jsonl"
    good = {"id": "a", "prompt": "p", "better": "b", "worse": "w", "flaw": "cold"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "worse": ""}) + "\n")
    with pytest.raises(ValueError, match=r"judge_pairs.jsonl: row 2, field 'worse'"):
        prefs.load_judge_pairs(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="appears 2 times"):
        prefs.load_judge_pairs(path)


def test_shipped_judge_pairs_are_valid_and_the_rubric_can_be_measured(tmp_path):
    from empathy_workbook.paths import DATA_DIR

    pairs = prefs.load_judge_pairs(DATA_DIR / "judge_pairs.jsonl")
    assert len(pairs) >= 20
    summary, rows = prefs.judge_agreement(get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path), pairs,
                                          progress=False)
    assert summary["parse_failures"] == 0  # the rubric always answers
    # Measured 2026-12-01: 27 of 27 pairs agree, mean margin 1.9 points. Each pair's worse answer has one
    # flaw written to be caught; more than 4 of 27 missed (agreement < 0.85), or a margin under 1 point,
    # means a change to the rubric or the pairs stopped it separating the flaws it was built for.
    assert summary["agreement"] >= 0.85, summary
    assert summary["mean_margin"] >= 1.0, summary


def test_presets_have_a_valid_preferences_section():
    for preset in ("tiny", "qwen3-0.6b"):
        cfg = load_config(preset).preferences
        assert cfg.sampling.temperature == 1.5 and cfg.gap == 2


def test_agreement_judges_say_which_could_not_run(tmp_path):
    main = get_judge(JudgeConfig(backend="rubric"), cache_dir=tmp_path)
    chosen, not_run = prefs.agreement_judges(main, JudgeConfig(backend="rubric"), None, cache_dir=tmp_path)
    assert list(chosen) == ["rubric"] and set(not_run) == {"transformers", "llama_cpp"}
    _, not_run = prefs.agreement_judges(main, JudgeConfig(backend="rubric"), str(tmp_path / "nope.gguf"), tmp_path)
    assert "is not a file" in not_run["llama_cpp"]


def test_compare_judges_reports_each_retention_and_their_overlap():
    def rows(judge, pairs):
        return [{"judge": judge, "gap": None if c is None else c - r, "chosen_overall": c, "rejected_overall": r}
                for c, r in pairs]
    main = rows("a", [(8, 3), (6, 5), (9, 2), (None, 4)])
    second = rows("b", [(7, 4), (7, 2), (5, 5), (6, 6)])
    out = prefs.compare_judges(main, second, gap=2)
    assert out["judges"]["judge"] == {"name": "a", "scored": 3, "kept": 2, "retention": round(2 / 3, 4)}
    assert out["judges"]["second_judge"]["kept"] == 2 and out["both_keep"] == 1
    assert out["overall_correlation"] is not None
