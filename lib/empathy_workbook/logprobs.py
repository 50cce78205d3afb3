"""Log-probabilities from logits in bounded memory: NLL, KL divergence and top-token agreement.

A position of a 151,936-token vocabulary is 1.2 MB in float64. Converting a whole text's logits at
once costs hundreds of MB per model, so the functions here take the logits as they are (a view into
llama.cpp's buffer, or a transformers output) and convert CHUNK_POSITIONS rows at a time.
"""

from __future__ import annotations

CHUNK_POSITIONS = 64  # ≈ 78 MB of float64 per array for Qwen3's vocabulary


def log_softmax(logits):
    """Row-wise log-softmax in float64 (numpy), stable for large logits."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def position_chunks(n: int, size: int = CHUNK_POSITIONS):
    """Slices that cover range(n) in steps of size."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def scored_positions(ids: list[int], mask: list[int]):
    """(rows, targets): the positions whose logits predict a masked-in token, and those tokens."""
    import numpy as np

    rows = np.array([t for t in range(len(ids) - 1) if mask[t + 1]], dtype=np.int64)
    return rows, np.asarray(ids, dtype=np.int64)[rows + 1]


def token_nll(logits, rows, targets, chunk: int = CHUNK_POSITIONS):
    """-log p(target) at each row; logits is (positions, vocab), only `chunk` rows are converted at a time."""
    import numpy as np

    parts = [-log_softmax(logits[rows[part]])[np.arange(len(rows[part])), targets[part]]
             for part in position_chunks(len(rows), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def token_statistics(ref_logits, other_logits, rows, targets, chunk: int = CHUNK_POSITIONS) -> dict:
    """Per scored position: NLL under both, KLD(ref || other) and whether their top tokens agree.

    ref_logits, other_logits: (positions, vocab) arrays of any float dtype; rows: positions to score;
    targets: the token each row predicts. Returns arrays "ref_nll", "other_nll", "kld", "agree" and
    "max_logit_diff" (largest absolute logit difference at the position: the scale of rounding noise).
    """
    import numpy as np

    out = {k: [] for k in ("ref_nll", "other_nll", "kld", "agree", "max_logit_diff")}
    for part in position_chunks(len(rows), chunk):
        ref, other = np.asarray(ref_logits[rows[part]]), np.asarray(other_logits[rows[part]])
        out["max_logit_diff"].append(np.abs(ref.astype(np.float64) - other).max(axis=-1))
        lp_ref, lp_other = log_softmax(ref), log_softmax(other)
        index = np.arange(lp_ref.shape[0]), targets[part]
        out["ref_nll"].append(-lp_ref[index])
        out["other_nll"].append(-lp_other[index])
        out["kld"].append((np.exp(lp_ref) * (lp_ref - lp_other)).sum(axis=-1))
        out["agree"].append(lp_ref.argmax(-1) == lp_other.argmax(-1))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
