"""Phase 00: load Context/Response pairs, validate, clean, deduplicate, length-filter, split by question,
and format them as TRL prompt/completion conversations in the model's own chat template."""

from __future__ import annotations

import csv
import html
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..chat import prompt_completion, tokenize_prompt_completion, word_count  # noqa: F401 (data.word_count in notebook 00)

FIELDS = ("Context", "Response")
LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


class DataError(ValueError):
    """Bad input: the message names the file, the row and the field."""

    def __init__(self, source: str, row: int | None, field_name: str | None, problem: str):
        where = source if row is None else f"{source}, row {row}"
        if field_name:
            where += f", field {field_name!r}"
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field_name, problem


@dataclass
class Pair:
    """One question/answer pair and where it came from (file and 1-based row)."""

    context: str
    response: str
    source: str
    row: int


# ---------------------------------------------------------------- loading and validation

def load_pairs(source: str, on_empty: str = "drop") -> list[Pair]:
    """Read and validate a hub data set id or a local file.

    A missing column, a missing or non-string value raise DataError naming file, row and field.
    Empty strings are real in scraped data: with on_empty='drop' they are kept here and dropped (and
    counted) by clean_pairs; with on_empty='error' they raise.
    """
    if on_empty not in ("drop", "error"):
        raise ValueError("on_empty must be 'drop' or 'error'")
    path = Path(source)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.exists():
            raise DataError(str(path), None, None, "file not found")
        records = _read_local(path)
        name = str(path)
    else:
        records = _read_hub(source)
        name = source
    return validate_records(records, name, on_empty)


def _read_local(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    # .jsonl, and .json files that are really JSON lines (the Amod file is one of those)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(str(path), number, None, f"not valid JSON ({err.msg})") from None
    return records


def _read_hub(dataset_id: str) -> list[dict]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, split="train")
    except Exception as err:  # offline, missing, or gated: say what to do instead
        raise DataError(dataset_id, None, None,
                        f"could not load from the hub ({type(err).__name__}: {err}); download the file "
                        "elsewhere and point data.source at the local .json/.jsonl/.csv/.parquet") from None
    return [dict(row) for row in dataset]


def validate_records(records: list, source: str, on_empty: str = "drop") -> list[Pair]:
    """Check every record has string Context and Response; rows are numbered from 1."""
    if not records:
        raise DataError(source, None, None, "no rows")
    pairs = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(source, number, None, f"expected an object with {FIELDS}, got {type(record).__name__}")
        for name in FIELDS:
            if name not in record:
                raise DataError(source, number, name, f"missing column (found {sorted(record)})")
            value = record[name]
            if value is None or (isinstance(value, float) and value != value):
                raise DataError(source, number, name, "missing value")
            if not isinstance(value, str):
                raise DataError(source, number, name, f"expected text, got {type(value).__name__}")
            if on_empty == "error" and not value.strip():
                raise DataError(source, number, name, "empty text")
        pairs.append(Pair(record["Context"], record["Response"], source, number))
    return pairs


# ---------------------------------------------------------------- cleaning

HTML_BREAK = re.compile(r"<\s*(br|/p|p)\s*/?\s*>", re.IGNORECASE)
HTML_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]*>")
# a lower-case letter, sentence punctuation, then straight into a capital: "night.Try" → "night. Try"
MISSING_SPACE = re.compile(r"(?<=[a-z][.!?])(?=[A-Z][a-z])")
SPACES = re.compile(r"[ \t\f\v]+")
MANY_NEWLINES = re.compile(r"\n{3,}")


def fix_unicode(text: str) -> str:
    """NFKC normalization: non-breaking spaces become spaces, compatibility characters their plain form."""
    return unicodedata.normalize("NFKC", text).replace("\u200b", "")


def strip_html(text: str) -> str:
    text = HTML_BREAK.sub("\n", text)
    return html.unescape(HTML_TAG.sub("", text))


def fix_missing_space(text: str) -> str:
    return MISSING_SPACE.sub(" ", text)


def fix_whitespace(text: str) -> str:
    lines = [SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


# --- What scraped counseling answers carry besides the answer (Amod's rows have all of these) ---
# Each rule removes the sentence (or line) holding the artifact, so no broken "call  today." remains.
URL = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"]+")
EMAIL = re.compile(r"(?i)\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# The area code is optional: US answers also give a local seven-digit number ("call 555-0123").
PHONE = re.compile(r"(?<![\w-])(?:\+?\d{1,2}[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])?\d{3}[\s.-]\d{4}(?![\w-])")
PROMOTION = re.compile(
    r"(?i)\b(?:free (?:\d+[- ]minute )?consultation|visit my (?:web ?site|page|blog)|book a session|"
    r"(?:check out|see) my (?:web ?site|practice|page|blog|book)|my practice'?s? (?:page|website)|"
    r"(?:reach out|contact me|get in touch) (?:to me )?(?:for|to schedule|to book)|work with me)\b")
# A closing formula with a comma, then only a name-like tail (capitalised words, credentials) or a role
# instead of a name ("Warmly,\nYour counselor") up to the end.
SIGNER_ROLE = r"(?i:your|the)[ \t]+(?i:counsel+or|therapist|psychologist|psychiatrist|clinician|social worker|coach)"
SIGN_OFF = re.compile(
    r"(?m)(?:^|(?<=[.!?])\s)(?i:best wishes|best regards|kind regards|warm regards|regards|warmly|sincerely|"
    r"take care|all the best|wishing you well|be well|cheers|best)\s*,[ \t]*\n?[ \t]*"
    r"(?:" + SIGNER_ROLE + r"|(?:the [a-z]+ team|[A-Z][\w.'-]*)(?:[ \t,]+(?:[A-Z][\w.'-]*|[a-z]+ team))*)?[ \t.]*\Z")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _drop_sentences(text: str, pattern: re.Pattern) -> str:
    """Remove every sentence (line by line) in which `pattern` occurs."""
    lines = []
    for line in text.split("\n"):
        if pattern.search(line):
            line = " ".join(s for s in SENTENCE_END.split(line) if not pattern.search(s))
        lines.append(line)
    return "\n".join(lines)


def strip_urls(text: str) -> str:
    return _drop_sentences(text, URL)


def strip_emails(text: str) -> str:
    return _drop_sentences(text, EMAIL)


def strip_phones(text: str) -> str:
    return _drop_sentences(text, PHONE)


def strip_promotion(text: str) -> str:
    """Self-promotion ('I offer a free consultation', 'visit my website'): the sentence goes."""
    return _drop_sentences(text, PROMOTION)


def strip_sign_off(text: str) -> str:
    """A closing formula and the name after it at the very end ('Best wishes,\nDr. Jane Rivera, LMFT')."""
    stripped = SIGN_OFF.sub("", text.rstrip())
    return stripped.rstrip() if stripped != text.rstrip() else text  # unchanged text stays byte for byte


def strip_repeated_sentences(text: str) -> str:
    """A sentence of four or more words said again later in the same answer: the repeat goes."""
    seen, lines = set(), []
    for line in text.split("\n"):
        kept, repeated = [], False
        for sentence in SENTENCE_END.split(line):
            key = re.sub(r"\W+", " ", sentence).strip().casefold()
            if len(key.split()) >= 4 and key in seen:
                repeated = True
                continue
            seen.add(key)
            kept.append(sentence)
        lines.append(" ".join(kept) if repeated else line)
    return "\n".join(lines)


CLEANING_RULES = (
    ("unicode", fix_unicode),
    ("html", strip_html),
    ("missing_space", fix_missing_space),
    ("url", strip_urls),
    ("email", strip_emails),
    ("phone", strip_phones),
    ("promotion", strip_promotion),
    ("sign_off", strip_sign_off),
    ("repeated_sentence", strip_repeated_sentences),
    ("whitespace", fix_whitespace),
)
# Rules that remove content rather than repair form: data.artifacts says whether they strip it or drop the row.
CONTENT_RULES = ("url", "email", "phone", "promotion", "sign_off", "repeated_sentence")
ARTIFACT_ACTIONS = ("strip", "drop")


def clean_text(text: str, counts: Counter | None = None, fired: set | None = None) -> str:
    """Apply every cleaning rule in order; count in `counts` each rule that changed the text (and add its
    name to `fired`)."""
    for name, rule in CLEANING_RULES:
        cleaned = rule(text)
        if cleaned != text:
            if counts is not None:
                counts[name] += 1
            if fired is not None:
                fired.add(name)
        text = cleaned
    return text


@dataclass
class CleanReport:
    rule_counts: Counter = field(default_factory=Counter)  # fields changed per rule
    dropped_empty: list = field(default_factory=list)  # (source, row)
    dropped_duplicates: list = field(default_factory=list)
    dropped_by_rule: Counter = field(default_factory=Counter)  # artifacts='drop': rows dropped, per content rule
    dropped_artifacts: list = field(default_factory=list)  # (source, row) dropped for an artifact

    def per_rule(self) -> dict:
        """{rule: {"changed": fields the rule changed, "dropped": rows it dropped}} for every rule, zeros included."""
        return {name: {"changed": self.rule_counts.get(name, 0), "dropped": self.dropped_by_rule.get(name, 0)}
                for name, _ in CLEANING_RULES}


def clean_pairs(pairs: list[Pair], artifacts: str = "strip") -> tuple[list[Pair], CleanReport]:
    """Clean both fields, then drop empty pairs and exact duplicates (first occurrence kept).

    artifacts='strip' removes URLs, e-mail addresses, phone numbers, self-promotion, sign-offs and
    repeated sentences from the text; 'drop' drops a row in which any of them occurs (counted per rule).
    """
    if artifacts not in ARTIFACT_ACTIONS:
        raise ValueError(f"artifacts={artifacts!r}: use one of {list(ARTIFACT_ACTIONS)}")
    report = CleanReport()
    seen = set()
    kept = []
    for pair in pairs:
        fired: set = set()
        changes: Counter = Counter()
        context = clean_text(pair.context, changes, fired)
        response = clean_text(pair.response, changes, fired)
        content_fired = sorted(fired & set(CONTENT_RULES))
        if artifacts == "drop" and content_fired:
            report.dropped_by_rule.update(content_fired)
            report.dropped_artifacts.append((pair.source, pair.row))
            continue
        report.rule_counts.update(changes)
        if not context or not response:
            report.dropped_empty.append((pair.source, pair.row))
            continue
        key = (context, response)
        if key in seen:
            report.dropped_duplicates.append((pair.source, pair.row))
            continue
        seen.add(key)
        kept.append(Pair(context, response, pair.source, pair.row))
    return kept, report


# ---------------------------------------------------------------- length filter and split

def token_lengths(pairs: list[Pair], tokenizer, system_prompt: str) -> list[int]:
    """Tokens of each rendered training example (system + question + answer + end token)."""
    return [len(tokenize_prompt_completion(tokenizer, prompt_completion(system_prompt, p.context, p.response)["prompt"],
                                           p.response)["input_ids"]) for p in pairs]


def filter_by_length(pairs: list[Pair], lengths: list[int], max_tokens: int) -> tuple[list[Pair], list[Pair]]:
    """(kept, dropped): pairs whose rendered example fits in max_tokens."""
    kept = [p for p, n in zip(pairs, lengths) if n <= max_tokens]
    dropped = [p for p, n in zip(pairs, lengths) if n > max_tokens]
    return kept, dropped


def filter_by_words(pairs: list[Pair], max_words: int) -> tuple[list[Pair], list[Pair]]:
    """(kept, dropped): pairs whose answer has at most max_words words (0 = keep all)."""
    if not max_words:
        return list(pairs), []
    return ([p for p in pairs if word_count(p.response) <= max_words],
            [p for p in pairs if word_count(p.response) > max_words])


def question_key(context: str) -> str:
    """The normalized question used to group answers: case, spacing and end punctuation ignored."""
    text = unicodedata.normalize("NFKC", context).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip(".?! ")


def split_by_question(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded 90/10-style split where every answer to a question lands on the same side.

    A row-level split would put other answers to the same validation question into training, so
    validation loss would measure memorization. Groups are shuffled and moved to validation until
    it holds about val_fraction of the rows.
    """
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[question_key(pair.context)].append(pair)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = round(val_fraction * len(pairs))
    val_keys, val_rows = set(), 0
    for key in keys:
        size = len(groups[key])
        if val_rows >= target:
            break
        if val_rows + size <= target or not val_keys:
            val_keys.add(key)
            val_rows += size
    train = [p for p in pairs if question_key(p.context) not in val_keys]
    val = [p for p in pairs if question_key(p.context) in val_keys]
    return train, val


def answers_per_question(pairs: list[Pair]) -> Counter:
    """How many questions have 1, 2, 3 … answers."""
    return Counter(Counter(question_key(p.context) for p in pairs).values())


def to_records(pairs: list[Pair], system_prompt: str, split: str) -> list[dict]:
    """TRL conversational prompt/completion records, plus where each row came from."""
    records = []
    for number, pair in enumerate(pairs):
        record = prompt_completion(system_prompt, pair.context, pair.response)
        record.update({"id": f"{split}-{number:05d}", "question_key": question_key(pair.context),
                       "source": Path(pair.source).name, "source_row": pair.row})
        records.append(record)
    return records


@dataclass
class Prepared:
    """Everything prepare_records did, step by step (notebook 00 shows each); unpacks as (train, val, counts)."""

    sources: dict  # resolved source → rows loaded from it
    loaded: list  # every pair as loaded, before cleaning
    report: CleanReport
    cleaned: list  # after cleaning, empty, duplicate (and, with artifacts='drop', artifact) pairs dropped
    too_wordy: list  # cleaned pairs whose answer is over max_answer_words
    lengths: list  # rendered length in tokens of each cleaned pair within the word cap
    too_long: list
    train_pairs: list
    val_pairs: list
    train_records: list
    val_records: list
    counts: dict

    def __iter__(self):
        return iter((self.train_records, self.val_records, self.counts))


def prepare_records(cfg, tokenizer, resolve=None) -> Prepared:
    """The whole phase in one call (notebook 00, tests and scripts): load, clean, length-filter, split, format.

    cfg is a DataConfig; resolve maps a preset path to a local path (default: config.data_path; a hub id
    stays as it is). `train, val, counts = prepare_records(...)` works; the result also keeps every
    intermediate step (see Prepared).
    """
    from ..config import data_path

    resolve = resolve or (lambda src: str(data_path(src)) if data_path(src).exists() else src)
    sources, loaded = {}, []
    for src in [cfg.source, *cfg.mix_in]:
        pairs = load_pairs(resolve(src))
        sources[resolve(src)] = len(pairs)
        loaded += pairs
    cleaned, report = clean_pairs(loaded, cfg.artifacts)
    short_enough, too_wordy = filter_by_words(cleaned, cfg.max_answer_words)
    lengths = token_lengths(short_enough, tokenizer, cfg.system_prompt)
    kept, too_long = filter_by_length(short_enough, lengths, cfg.max_tokens)
    train, val = split_by_question(kept, cfg.val_fraction, cfg.seed)
    counts = {"loaded": len(loaded), "dropped_empty": len(report.dropped_empty),
              "dropped_duplicates": len(report.dropped_duplicates), "dropped_artifacts": len(report.dropped_artifacts),
              "dropped_too_many_words": len(too_wordy), "dropped_too_long": len(too_long),
              "train": len(train), "val": len(val), "cleaning": report.per_rule()}
    return Prepared(sources, loaded, report, cleaned, too_wordy, lengths, too_long, train, val,
                    to_records(train, cfg.system_prompt, "train"), to_records(val, cfg.system_prompt, "val"), counts)


def questions_by_split(prepared: Prepared) -> tuple[set, set]:
    """(training questions, validation questions), as question keys; split_by_question keeps them disjoint."""
    return ({question_key(p.context) for p in prepared.train_pairs},
            {question_key(p.context) for p in prepared.val_pairs})


def metrics(ctx, prepared: Prepared) -> dict:
    """Phase 00's metrics.json contract, from what prepare_records returned (ctx: the phase's, for its config)."""
    cfg, counts = ctx.cfg.data, prepared.counts
    kept = prepared.train_pairs + prepared.val_pairs
    kept_lengths = sorted(n for n in prepared.lengths if n <= cfg.max_tokens)
    train_q, val_q = questions_by_split(prepared)
    steps = {"loaded": counts["loaded"], "after cleaning, minus empty": counts["loaded"] - counts["dropped_empty"],
             "minus exact duplicates": len(prepared.cleaned),
             f"≤ {cfg.max_answer_words or '∞'} words": len(prepared.cleaned) - len(prepared.too_wordy),
             f"≤ {cfg.max_tokens} tokens": len(kept),
             "train": counts["train"], "validation": counts["val"]}
    return {
        "rows_loaded": counts["loaded"],
        "sources": list(prepared.sources),
        "cleaning": prepared.report.per_rule(),
        "artifacts": cfg.artifacts,
        "dropped_artifacts": counts["dropped_artifacts"],
        "dropped_too_many_words": counts["dropped_too_many_words"],
        "dropped_empty": counts["dropped_empty"],
        "dropped_duplicates": counts["dropped_duplicates"],
        "dropped_too_long": counts["dropped_too_long"],
        "max_tokens": cfg.max_tokens,
        "train_rows": len(prepared.train_records),
        "val_rows": len(prepared.val_records),
        "train_questions": len(train_q),
        "val_questions": len(val_q),
        "questions_in_both": len(train_q & val_q),
        "answers_per_question": {str(k): v for k, v in sorted(answers_per_question(kept).items())},
        "tokens_median": kept_lengths[len(kept_lengths) // 2] if kept_lengths else 0,
        "steps": steps,
    }
