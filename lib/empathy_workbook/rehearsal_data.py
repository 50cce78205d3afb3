"""The rehearsal's data file: ``data/rehearsal_amod_shaped.json``, written by
``python -m empathy_workbook.rehearsal_data`` (deterministic; a test regenerates it and compares bytes).

``build_amod_shaped`` makes JSON lines with ``Context``/``Response`` from the project's own corpus, with the
artifacts real counseling answers have (repeated questions with several answers, verbatim repeats,
non-breaking spaces, HTML, URLs, e-mail addresses, phone numbers, sign-offs and self-promotion, sentences
run together, a sentence said twice, very long answers, an empty response). The rehearsal's random-weight
model comes from ``models/random_weights.py``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

AMOD_FILE = "rehearsal_amod_shaped.json"
# General emotional support, as in Amod; the fall-risk corpus comes in through data.mix_in as in the real run.
CORPUS_FILES = ("support_corpus.jsonl",)

SIGN_OFFS = ("Best wishes,\nDr. Jane Rivera, LMFT", "Warmly,\nSam", "Take care,\nThe counseling team",
             "Sincerely, Alex Moreno, LPC")
PROMOTIONS = ("I offer a free 15-minute consultation, so feel free to reach out to me.",
              "If you'd like to work with me, please visit my website to book a session.",
              "Check out my practice's page for more articles like this one.")
URLS = ("https://www.example-counseling.org/articles/coping-with-worry",
        "http://example.net/blog/2019/05/self-care-tips?ref=answer", "www.example.com/help")
EMAILS = ("jane.rivera@example-counseling.org", "help@example.net")
PHONES = ("(555) 123-4567", "555-987-6543", "+1 555 246 8100", "1-800-555-0199")


def _corpus_rows(data_dir: Path) -> list[dict]:
    rows = []
    for name in CORPUS_FILES:
        for line in (data_dir / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _sentences(text: str) -> list[str]:
    import re

    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _roughen(answer: str, rng: random.Random) -> str:
    """Give one answer some of the artifacts scraped counseling answers have (each with its own chance)."""
    sentences = _sentences(answer)
    if len(sentences) > 2 and rng.random() < 0.15:  # a sentence said twice
        i = rng.randrange(len(sentences))
        sentences.insert(i + 1, sentences[i])
    text = " ".join(sentences)
    if rng.random() < 0.25:  # sentences run together
        text = text.replace(". ", ".", 1 + rng.randrange(2))
    if rng.random() < 0.3:
        text = text.replace(" ", "\u00a0", 2 + rng.randrange(4))
    if rng.random() < 0.2:
        text = "<p>" + text.replace(". ", ".</p><p>", 1) + "</p>"
    if rng.random() < 0.1:
        text += "<br>Stress &amp; worry are normal."
    if rng.random() < 0.15:
        text += f" You can read more at {rng.choice(URLS)}."
    if rng.random() < 0.08:
        text += f" Email me at {rng.choice(EMAILS)} with any questions."
    if rng.random() < 0.1:
        text += f" Call {rng.choice(PHONES)} to talk to someone."
    if rng.random() < 0.12:
        text += "\n\n" + rng.choice(PROMOTIONS)
    if rng.random() < 0.15:
        text += "\n\n" + rng.choice(SIGN_OFFS)
    return text


def build_amod_shaped(data_dir: Path, seed: int = 0) -> list[dict]:
    """Rows in the Amod schema from the project's corpus: several answers per question, with artifacts.

    Per question: its own answer plus 0-3 answers borrowed from other questions (Amod's questions have
    about 3.5 answers each; here, so do some); some rows repeated verbatim; every 40th answer made very
    long (eight answers joined, 600-900 words); one empty response.
    """
    rng = random.Random(seed)
    corpus = _corpus_rows(data_dir)
    rows = []
    for index, row in enumerate(corpus):
        answers = [row["Response"]]
        for _ in range(rng.choice((0, 0, 1, 2, 3))):
            answers.append(rng.choice(corpus)["Response"])
        for answer in answers:
            if len(rows) % 40 == 39:  # ~600-900 words, like Amod's longest answers (939)
                answer = " ".join([answer] + [rng.choice(corpus)["Response"] for _ in range(7)])
            context = row["Context"] if rng.random() > 0.2 else row["Context"].replace(" ", "\u00a0", 1)
            rows.append({"Context": context, "Response": _roughen(answer, rng)})
        if rng.random() < 0.08:  # the same answer scraped twice
            rows.append(dict(rows[-1]))
    rows.insert(len(rows) // 2, {"Context": corpus[0]["Context"], "Response": ""})
    return rows


def write_amod_shaped(path: Path, data_dir: Path, seed: int = 0) -> int:
    """Write the rows as JSON lines (the Amod file's layout, although its name ends in .json)."""
    rows = build_amod_shaped(data_dir, seed)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    from .paths import DATA_DIR

    parser = argparse.ArgumentParser(description="write the Amod-shaped rehearsal data file")
    parser.add_argument("out", nargs="?", type=Path, default=DATA_DIR / AMOD_FILE)
    args = parser.parse_args(argv)
    print(f"{write_amod_shaped(args.out, DATA_DIR)} rows → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
