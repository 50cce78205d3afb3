"""Log-probability helpers shared by the export and evaluation phases: exact values and bounded memory."""

import math
import tracemalloc

import numpy as np
import pytest

from empathy_workbook import logprobs


def direct_statistics(ref, other, rows, targets):
    """The unchunked textbook formulas, for comparison."""
    def lsm(x):
        x = x.astype(np.float64)
        return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))

    lp_r, lp_o = lsm(ref[rows]), lsm(other[rows])
    index = np.arange(len(rows)), targets
    return {"ref_nll": -lp_r[index], "other_nll": -lp_o[index], "kld": (np.exp(lp_r) * (lp_r - lp_o)).sum(-1),
            "agree": lp_r.argmax(-1) == lp_o.argmax(-1)}


def test_chunked_statistics_equal_the_direct_formulas():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(23, 50)).astype(np.float32) * 4
    other = ref + rng.normal(size=ref.shape).astype(np.float32) * 0.5
    rows, targets = logprobs.scored_positions(list(rng.integers(0, 50, 23)), [0] * 5 + [1] * 18)
    expected = direct_statistics(ref, other, rows, targets)
    for chunk in (1, 4, 64):
        got = logprobs.token_statistics(ref, other, rows, targets, chunk=chunk)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12)
    assert (got["kld"] > 0).all()
    same = logprobs.token_statistics(ref, ref, rows, targets, chunk=4)
    assert np.abs(same["kld"]).max() < 1e-12 and same["agree"].all() and same["max_logit_diff"].max() == 0


def test_token_nll_is_log_vocab_for_uniform_logits():
    rows, targets = logprobs.scored_positions([3, 1, 4, 1, 5], [0, 1, 1, 1, 1])
    nll = logprobs.token_nll(np.zeros((5, 7), dtype=np.float32), rows, targets, chunk=3)
    assert nll.tolist() == pytest.approx([math.log(7)] * 4)


def test_kl_divergence_memory_is_bounded_for_a_qwen3_vocabulary():
    """256 positions × 151,936 logits: one float64 copy of them all is 311 MB; chunks of 16 need far less."""
    vocab, positions, chunk = 151_936, 256, 16
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((positions, vocab), dtype=np.float32)
    other = ref + np.float32(0.01)
    rows, targets = np.arange(positions - 1), rng.integers(0, vocab, positions - 1)
    tracemalloc.start()
    try:
        stats = logprobs.token_statistics(ref, other, rows, targets, chunk=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_full_float64_copy = positions * vocab * 8
    assert peak < one_full_float64_copy / 2, f"peak {peak / 2**20:.0f} MiB"
    assert np.abs(stats["kld"]).max() < 1e-9  # a constant shift of the logits changes no probability


def test_nll_only_counts_answer_tokens():
    import numpy as np

    rows, targets = logprobs.scored_positions([0, 1, 2, 0], [0, 0, 1, 1])
    assert rows.tolist() == [1, 2] and targets.tolist() == [2, 0]  # logits at t predict token t+1
    nll = logprobs.token_nll(np.zeros((4, 3), dtype=np.float32), rows, targets)
    assert nll.tolist() == pytest.approx([math.log(3)] * 2)
