"""Phase 02, step 1: the rejected answers of the preference pairs.

rejected = an answer sampled from the SFT model at a high temperature (realistic but a little off),
optionally degraded on purpose: cut at 70 % of its length, its first sentence dropped, or sampled with a
repetition penalty below 1.0. Each row's degradation is drawn once from its id and the seed.

Generation appends to candidates.jsonl as it goes, so an interrupted run resumes where it stopped and
samples exactly as an uninterrupted one would. preferences.py judges and filters what this writes.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, replace
from pathlib import Path

from ..chat import has_think_leak
from ..config import PreferenceConfig
from ..distributed import is_main_process, main_process_first, map_in_order, wait_for_everyone, world_size
from ..io import append_jsonl, iter_jsonl, sha256_text, write_jsonl
from ..models.loading import generate

DEGRADATIONS = ("none", "truncate", "drop_first_sentence", "low_repetition_penalty")
TRUNCATE_FRACTION = 0.7  # the design document's "truncate at 70 % of the length"
CHUNK_BATCHES = 4  # batches generated between two appends to candidates.jsonl (what a crash can lose)
SENTENCE_BREAK = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")


# ---------------------------------------------------------------------------------------------
# Degradations
# ---------------------------------------------------------------------------------------------

def truncate_text(text: str, fraction: float = TRUNCATE_FRACTION) -> str:
    """The longest run of whole words from the start that fits in `fraction` of the text's length.

    The answer stops abruptly, as the design document intends. When even the first word is longer
    than that, the first word alone is kept (a cut inside a word would be a different defect).
    """
    text = text.strip()
    limit = math.floor(len(text) * fraction)
    words = list(re.finditer(r"\S+", text))
    ends = [m.end() for m in words if m.end() <= limit]
    if not words:
        return ""
    return text[: ends[-1] if ends else words[0].end()]


def drop_first_sentence(text: str) -> str:
    """The text without its first sentence (where acknowledgment usually sits); unchanged if it has only one."""
    parts = SENTENCE_BREAK.split(text.strip(), maxsplit=1)
    if len(parts) < 2 or not parts[1].strip():
        return text.strip()
    return parts[1].strip()


def apply_degradation(text: str, degradation: str) -> str:
    """The sampled text after a text-level degradation (the repetition penalty acts at sampling time)."""
    if degradation not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {degradation!r}: one of {DEGRADATIONS}")
    if degradation == "truncate":
        return truncate_text(text)
    if degradation == "drop_first_sentence":
        return drop_first_sentence(text)
    return text.strip()


def assign_degradation(row_id: str, cfg: PreferenceConfig, seed: int) -> str:
    """The degradation of one row, drawn once from its id and the seed (stable across resumes and orders).

    The rates are shares of rows and are mutually exclusive: with rates 0.2/0.2/0.2, 40 % stay plain samples.
    """
    u = random.Random(f"{seed}:{row_id}").random()
    edge = 0.0
    for name, rate in (("truncate", cfg.truncate_rate), ("drop_first_sentence", cfg.drop_first_sentence_rate),
                       ("low_repetition_penalty", cfg.low_repetition_penalty_rate)):
        edge += rate
        if u < edge:
            return name
    return "none"


# ---------------------------------------------------------------------------------------------
# Prompt choice and generation
# ---------------------------------------------------------------------------------------------

def choose_records(records: list[dict], max_n: int, seed: int) -> list[dict]:
    """At most max_n records (-1 = all), a seeded choice kept in file order."""
    if max_n < 0 or max_n >= len(records):
        return list(records)
    picked = set(random.Random(seed).sample(range(len(records)), max_n))
    return [r for i, r in enumerate(records) if i in picked]


def question(record: dict) -> str:
    """The user's question of a prompt/completion record (the last prompt message)."""
    return record["prompt"][-1]["content"]


def settings_key(cfg: PreferenceConfig, model_id: str) -> str:
    """Hash of everything that shapes a candidate: the model, the sampling and the degradation rates."""
    payload = {"model": model_id, "sampling": asdict(cfg.sampling), "truncate": cfg.truncate_rate,
               "drop_first": cfg.drop_first_sentence_rate, "low_rep_rate": cfg.low_repetition_penalty_rate,
               "low_rep": cfg.low_repetition_penalty}
    return sha256_text(repr(sorted(payload.items())))[:16]


def read_candidates(path: Path, settings: str, log=print) -> list[dict]:
    """Rows already generated with these settings; rows from other settings are removed from the file."""
    path = Path(path)
    rows = list(iter_jsonl(path))
    fresh = [r for r in rows if r.get("settings") == settings]
    if len(fresh) != len(rows):
        log(f"{path.name}: {len(rows) - len(fresh)} rows came from other settings (model, sampling or "
            "degradation rates changed) and will be generated again")
        write_jsonl(path, fresh)
    elif path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        # a crash cut the last line short: drop it now, or the next append would glue onto it
        log(f"{path.name}: dropping a line cut short by an interrupted run")
        write_jsonl(path, fresh)
    return fresh


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _split_seed(seed: int, split: str) -> int:
    return seed + (0 if split == "train" else 100_003)


def generate_candidates(model, tokenizer, records: list[dict], cfg: PreferenceConfig, path: Path, split: str,
                        settings: str, progress: bool = True, log=print) -> list[dict]:
    """Sample one rejected answer per record (appending to `path`), skipping records already done.

    Work is cut into chunks of CHUNK_BATCHES batches, formed from ALL records sorted by prompt length,
    and chunk c is sampled with seed + 1000 * c: a resumed run samples the same way as an uninterrupted
    one. Rows drawn for the low repetition penalty are sampled in their own batches with that penalty.
    In N processes (accelerate) each process samples a share of the chunks, with the same seeds, and the main
    process appends them in chunk order. Returns this split's rows in the order of `records`.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    with main_process_first():  # only the main process may rewrite a stale file; the others then read it clean
        done = {r["id"]: r for r in read_candidates(path, settings, log=log) if r["split"] == split}
    seed = _split_seed(cfg.sampling.seed, split)
    ordered = sorted(records, key=lambda r: (len(question(r)) + len(r["prompt"][0]["content"]), r["id"]))
    chunks = [(number, [r for r in chunk if r["id"] not in done])
              for number, chunk in enumerate(_chunks(ordered, cfg.sampling.batch_size * CHUNK_BATCHES))]
    pending = [(number, chunk) for number, chunk in chunks if chunk]
    todo = sum(len(chunk) for _, chunk in pending)
    if len(done) and is_main_process():
        log(f"{split}: {len(done)} of {len(records)} answers already in {path.name}; generating {todo}")
    one_process = world_size() == 1
    with tqdm(total=todo, desc=f"sampling rejected answers ({split})",
              disable=not progress or not todo or not is_main_process()) as bar:
        def sample(share: list[tuple[int, list[dict]]]) -> list[list[dict]]:
            sampled = []
            for number, chunk in share:
                rows = sample_chunk(model, tokenizer, chunk, cfg, seed + 1000 * number, split, settings)
                if one_process:  # appended as each chunk finishes: an interrupted run keeps them
                    for row in rows:
                        append_jsonl(path, row)
                sampled.append(rows)
                bar.update(len(chunk))
            return sampled

        new_rows = [row for rows in map_in_order(sample, pending) for row in rows]
    if not one_process and is_main_process():
        for row in new_rows:
            append_jsonl(path, row)
    wait_for_everyone()
    done.update((row["id"], row) for row in new_rows)
    return [done[r["id"]] for r in records]


def sample_chunk(model, tokenizer, chunk: list[dict], cfg: PreferenceConfig, chunk_seed: int, split: str,
                 settings: str) -> list[dict]:
    """candidates.jsonl rows of one chunk: plain samples first, then those drawn for the low repetition penalty
    (sampled in their own batches with it, seed + 1)."""
    plan = {r["id"]: assign_degradation(r["id"], cfg, cfg.sampling.seed) for r in chunk}
    groups = {
        None: [r for r in chunk if plan[r["id"]] != "low_repetition_penalty"],
        cfg.low_repetition_penalty: [r for r in chunk if plan[r["id"]] == "low_repetition_penalty"],
    }
    rows = []
    for offset, (penalty, group) in enumerate(groups.items()):
        if not group:
            continue
        sampling = replace(cfg.sampling, seed=chunk_seed + offset)
        outputs = generate(model, tokenizer, [r["prompt"] for r in group], sampling, repetition_penalty=penalty,
                           progress=False)
        rows += [candidate_row(record, out, plan[record["id"]], penalty or cfg.sampling.repetition_penalty, split,
                               settings) for record, out in zip(group, outputs)]
    return rows


def candidate_row(record: dict, output: dict, degradation: str, penalty: float, split: str, settings: str) -> dict:
    """One row of candidates.jsonl: the prompt, both answers, and how the rejected one was made."""
    sampled = output["text"]
    rejected = apply_degradation(sampled, degradation)
    return {
        "id": record["id"], "split": split, "question_key": record.get("question_key", ""),
        "prompt": record["prompt"], "chosen": record["completion"][-1]["content"],
        "sampled": sampled, "rejected": rejected, "degradation": degradation,
        "degraded": rejected != sampled.strip(), "repetition_penalty": penalty,
        "ended_on_eos": output["ended_on_eos"], "new_tokens": output["new_tokens"],
        "think_leak": has_think_leak(sampled), "settings": settings,
    }


def sample_with_sft_model(model_cfg, cfg: PreferenceConfig, sft_dir: Path, train_records: list[dict],
                          val_records: list[dict], path: Path, progress: bool = True,
                          log=print) -> tuple[list[dict], list[dict], str]:
    """(train candidates, validation candidates, device): sft/merged loaded on this machine's device samples one
    rejected answer per record into `path` (resumable; shared across processes under accelerate), then is freed."""
    from ..models.loading import free_memory, load_causal_lm, load_tokenizer, select_backend

    backend = select_backend(model_cfg, "bf16")
    model_dir = Path(sft_dir) / "merged"
    settings = settings_key(cfg, sft_identity(sft_dir))
    tokenizer = load_tokenizer(str(model_dir), model_cfg.trust_remote_code)
    model = load_causal_lm(str(model_dir), backend.device, backend.precision, model_cfg.trust_remote_code)
    try:
        train = generate_candidates(model, tokenizer, train_records, cfg, path, "train", settings, progress, log)
        val = generate_candidates(model, tokenizer, val_records, cfg, path, "val", settings, progress, log)
    finally:
        del model
        free_memory()  # room for the judge
    return train, val, backend.device


def sft_identity(sft_dir: Path) -> str:
    """What identifies the SFT model that samples (for settings_key): its phase fingerprint, else its weight files."""
    from ..io import read_json
    from ..judges import model_identity

    metrics = Path(sft_dir) / "metrics.json"
    fingerprint = read_json(metrics).get("_fingerprint") if metrics.exists() else None
    return f"sft:{fingerprint}" if fingerprint else model_identity(str(Path(sft_dir) / "merged"))
