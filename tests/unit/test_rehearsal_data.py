"""rehearsal_data.py: the committed Amod-shaped data file is what its generator writes, with the real file's
artifacts."""

import json

from empathy_workbook import rehearsal_data
from empathy_workbook.paths import DATA_DIR
from empathy_workbook.phases import data


def test_committed_amod_shaped_file_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "amod.json"
    rehearsal_data.write_amod_shaped(out, DATA_DIR)
    assert out.read_bytes() == (DATA_DIR / rehearsal_data.AMOD_FILE).read_bytes(), \
        "regenerate it: python -m empathy_workbook.rehearsal_data"


def test_amod_shaped_file_has_the_artifacts_of_the_real_one():
    path = DATA_DIR / rehearsal_data.AMOD_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(set(r) == {"Context", "Response"} for r in rows) and not path.read_text().startswith("[")
    answers_per_question = data.answers_per_question(data.load_pairs(str(path)))
    assert max(answers_per_question) >= 3 and sum(1 for r in rows if not r["Response"]) >= 1
    assert max(len(r["Response"].split()) for r in rows) > 500
    _, report = data.clean_pairs(data.load_pairs(str(path)))
    fired = {rule for rule, n in report.per_rule().items() if n["changed"]}
    assert fired >= {"unicode", "html", "missing_space", "url", "email", "phone", "promotion", "sign_off",
                     "repeated_sentence"}
    assert report.dropped_duplicates and report.dropped_empty
