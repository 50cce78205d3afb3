"""Probability scoring (the G-Eval method): a judge's score read from its next-token distribution.

The judge prompt is the JSON-mode prompt with the assistant's reply already begun, up to the place
where one criterion's score is written: ``{"warmth": ``. One forward pass then gives the probability
of each score token; the score is the expectation over 1-10 (finer than an integer, which helps a gap
filter) and the argmax is kept beside it. Nothing is decoded, so nothing can fail to parse, and even a
random-weight judge returns a score. ``overall`` is the mean of the five criteria (no sixth position
is read: an overall written after the criteria would only restate them).

"10" may be two tokens: Qwen's tokenizer splits numbers into digits, so the judge writes "1" then "0".
The branch of each criterion therefore carries the token "1" after its score position, and one pass
reads both P(first digit) and P(next | "1"):  P(10) = P("1") * P("0" | "1"),
P(1) = P("1") * (1 - P(any digit | "1")). Probability on tokens that are no score is dropped and the
ten values renormalised; ``score_mass`` records how much there was (a trained judge puts most of its
mass on scores, a random one almost none).

Two layouts for the five criteria (bench/bench_judge.py measures both):
- ``one_prompt``: one sequence = shared prefix + five short branches, each branch restarting its
  positions after the prefix and masked so it sees the prefix and itself only (a tree-shaped 4-D
  attention mask). One forward pass per batch of answers.
- ``prefix_cache``: the shared prefix once (KV cache), then the cache repeated five times and the five
  branches as one batch on top. Two forward passes per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCORES = tuple(range(1, 11))


@dataclass(frozen=True)
class ScoreTokens:
    """How a tokenizer writes the scores 1-10 right after a criterion's ``": ``."""

    first: dict  # score -> id of its first token (for 10 the id of "1" when ten_is_two_tokens)
    ten_is_two_tokens: bool  # "10" is written "1", "0"
    zero: int | None  # id of "0" after "1" (when ten_is_two_tokens)
    digits: tuple  # ids of "0"-"9" as they follow "1" (what P(1) must exclude)

    @property
    def one(self) -> int:
        return self.first[1]


def score_tokens(encode, context: str = '{"warmth": ') -> ScoreTokens:
    """The score-token ids of a tokenizer; encode: text -> list of ids (no special tokens).

    Found by tokenizing the context followed by each score: what follows the tokens all ten share is how
    that score is written there. Raises ValueError for a tokenizer whose scores this module cannot read.
    """
    full = {n: list(encode(context + str(n))) for n in SCORES}
    common = min(len(ids) for ids in full.values())
    for i in range(common):
        if len({ids[i] for ids in full.values()}) > 1:
            common = i
            break
    tails = {n: ids[common:] for n, ids in full.items()}
    if any(len(tails[n]) != 1 for n in range(1, 10)) or len({tails[n][0] for n in range(1, 10)}) != 9:
        raise ValueError(f"the scores 1-9 after {context!r} are not nine distinct single tokens: {tails}")
    first = {n: tails[n][0] for n in range(1, 10)}
    after_one = {d: list(encode(context + "1" + str(d)))[common:] for d in range(10)}
    if any(len(ids) != 2 or ids[0] != first[1] for ids in after_one.values()):
        raise ValueError(f"digits after '1' are not written as one more token each: {after_one}")
    digits = tuple(ids[1] for ids in after_one.values())
    if len(tails[10]) == 1:
        first[10] = tails[10][0]
        return ScoreTokens(first, False, None, digits)
    if tails[10] == [first[1], after_one[0][1]]:
        first[10] = first[1]
        return ScoreTokens(first, True, tails[10][1], digits)
    raise ValueError(f"'10' after {context!r} is neither one token nor '1' + '0': {tails[10]}")


def _softmax(logits) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def score_distribution(first_probs, after_one_probs, tokens: ScoreTokens) -> tuple[list[float], float]:
    """(P(1..10) renormalised, mass on score tokens) from the two next-token distributions.

    first_probs: probabilities over the vocabulary where the score starts (indexable by token id);
    after_one_probs: the distribution after the token "1" (only used when "10" is two tokens).
    """
    raw = [float(first_probs[tokens.first[n]]) for n in range(1, 10)]
    if tokens.ten_is_two_tokens:
        p_one = raw[0]
        digit_mass = min(1.0, sum(float(after_one_probs[d]) for d in tokens.digits))
        raw[0] = p_one * (1.0 - digit_mass)
        raw.append(p_one * float(after_one_probs[tokens.zero]))
    else:
        raw.append(float(first_probs[tokens.first[10]]))
    mass = sum(raw)
    if not mass > 0:  # underflow: no information at all, say so with a flat distribution
        return [0.1] * 10, 0.0
    return [p / mass for p in raw], mass


def expected_score(probs: list[float]) -> tuple[float, int]:
    """(expectation, argmax) of a distribution over the scores 1..10."""
    expectation = sum(n * p for n, p in zip(SCORES, probs))
    argmax = SCORES[max(range(len(probs)), key=lambda i: probs[i])]
    return expectation, argmax


def criterion_prefill(criterion: str) -> str:
    """The assistant's reply begun up to where the criterion's score is written."""
    return '{"' + criterion + '": '


# ---------------------------------------------------------------------------------------------
# Building the token layouts (shared by the transformers and llama.cpp backends)
# ---------------------------------------------------------------------------------------------

@dataclass
class Branches:
    """One answer's shared prefix and one branch per criterion (each branch ends at the score position,
    plus the token "1" when "10" is two tokens)."""

    prefix: list
    branches: list  # list of token lists, in criteria order
    score_at: list  # per branch: index inside the branch whose next-token distribution is the score's
    one_at: list  # per branch: index of the "1" token (None when not needed)


def build_branches(context_ids: list[list[int]], tokens: ScoreTokens) -> Branches:
    """Split the per-criterion prompts (token lists ending where the score goes) into prefix + branches."""
    shared = min(len(ids) for ids in context_ids)
    for i in range(shared):
        if len({ids[i] for ids in context_ids}) > 1:
            shared = i
            break
    shared = min(shared, min(len(ids) for ids in context_ids) - 1)  # every branch keeps at least one token
    prefix = list(context_ids[0][:shared])
    branches, score_at, one_at = [], [], []
    for ids in context_ids:
        branch = list(ids[shared:])
        score_at.append(len(branch) - 1)
        if tokens.ten_is_two_tokens:
            branch.append(tokens.one)
            one_at.append(len(branch) - 1)
        else:
            one_at.append(None)
        branches.append(branch)
    return Branches(prefix, branches, score_at, one_at)


def result_from_distributions(criteria: tuple, firsts: list, afters: list, tokens: ScoreTokens) -> dict:
    """Per-criterion expectation, argmax and mass from probability rows (one pair per criterion)."""
    out = {"criteria": {}, "argmax": {}, "mass": {}}
    for name, first, after in zip(criteria, firsts, afters):
        probs, mass = score_distribution(first, after, tokens)
        expectation, argmax = expected_score(probs)
        out["criteria"][name] = round(expectation, 4)
        out["argmax"][name] = argmax
        out["mass"][name] = round(mass, 6)
    return out


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

def _decoder_and_head(model):
    """(decoder returning hidden states, function hidden -> logits) of a causal LM."""
    decoder = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)

    def logits(hidden):
        out = head(hidden).float()
        if cap:  # Gemma 2-style soft-capping, when a model has it
            out = cap * (out / cap).tanh()
        return out
    return decoder, logits


def one_prompt_logits(model, items: list[Branches], device) -> tuple[list, list]:
    """One forward pass for a batch of answers, tree-masked. Returns per item the (first, after-one)
    probability rows of each branch (torch tensors on CPU)."""
    import torch

    decoder, head = _decoder_and_head(model)
    seqs, positions, owners, reads = [], [], [], []
    for item in items:
        ids, pos, owner = list(item.prefix), list(range(len(item.prefix))), [-1] * len(item.prefix)
        read = []
        for b, branch in enumerate(item.branches):
            start = len(ids)
            ids += branch
            pos += range(len(item.prefix), len(item.prefix) + len(branch))
            owner += [b] * len(branch)
            read.append((start + item.score_at[b], None if item.one_at[b] is None else start + item.one_at[b]))
        seqs.append(ids)
        positions.append(pos)
        owners.append(owner)
        reads.append(read)
    width = max(len(s) for s in seqs)
    dtype = next(model.parameters()).dtype
    blocked = torch.finfo(dtype).min
    input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
    position_ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.full((len(seqs), 1, width, width), blocked, dtype=dtype)
    for row, (ids, pos, owner) in enumerate(zip(seqs, positions, owners)):
        n = len(ids)
        input_ids[row, :n] = torch.tensor(ids)
        position_ids[row, :n] = torch.tensor(pos)
        own = torch.tensor(owner)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        same = (own[None, :] == -1) | (own[None, :] == own[:, None])  # the prefix, or my own branch
        mask[row, 0, :n, :n] = torch.where(causal & same, 0.0, blocked)
        idx = torch.arange(n, width)
        mask[row, 0, idx, idx] = 0.0  # padding rows attend to themselves (no empty softmax)
    with torch.no_grad():
        hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                         position_ids=position_ids.to(device)).last_hidden_state
        rows, cols = [], []
        for row, read in enumerate(reads):
            for score_at, one_at in read:
                rows += [row, row]
                cols += [score_at, score_at if one_at is None else one_at]
        probs = head(hidden[torch.tensor(rows), torch.tensor(cols)]).softmax(-1).cpu()
    return _split(probs, [len(item.branches) for item in items])


def prefix_cache_logits(model, items: list[Branches], device) -> tuple[list, list]:
    """Two forward passes: the left-padded shared prefixes with a KV cache, then the cache repeated once
    per branch and all branches on top. Same return as one_prompt_logits."""
    import torch

    decoder, head = _decoder_and_head(model)
    k = len(items[0].branches)
    width = max(len(item.prefix) for item in items)
    pad = 0
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for row, item in enumerate(items):  # left padding: every prefix ends in the last column
        n = len(item.prefix)
        ids[row, width - n:] = torch.tensor(item.prefix, dtype=torch.long)
        mask[row, width - n:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    bwidth = max(len(b) for item in items for b in item.branches)
    bids = torch.full((len(items) * k, bwidth), pad, dtype=torch.long)
    bmask = torch.zeros(len(items) * k, bwidth, dtype=torch.long)
    bpos = torch.zeros(len(items) * k, bwidth, dtype=torch.long)
    reads = []
    for row, item in enumerate(items):
        for b, branch in enumerate(item.branches):
            r = row * k + b
            bids[r, :len(branch)] = torch.tensor(branch, dtype=torch.long)
            bmask[r, :len(branch)] = 1
            bpos[r] = len(item.prefix) + torch.arange(bwidth)
            reads.append((r, item.score_at[b], item.score_at[b] if item.one_at[b] is None else item.one_at[b]))
    with torch.no_grad():
        out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                      use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), bmask], dim=1)
        hidden = decoder(input_ids=bids.to(device), attention_mask=full_mask.to(device),
                         position_ids=bpos.to(device), past_key_values=cache, use_cache=True).last_hidden_state
        rows = [r for r, _, _ in reads for _ in (0, 1)]
        cols = [c for _, s, o in reads for c in (s, o)]
        probs = head(hidden[torch.tensor(rows), torch.tensor(cols)]).softmax(-1).cpu()
    return _split(probs, [len(item.branches) for item in items])


def _split(probs, counts: list[int]) -> tuple[list, list]:
    """Rows come as (first, after-one) pairs per branch; regroup them per item."""
    firsts, afters, i = [], [], 0
    for count in counts:
        firsts.append([probs[i + 2 * b] for b in range(count)])
        afters.append([probs[i + 2 * b + 1] for b in range(count)])
        i += 2 * count
    return firsts, afters


LAYOUTS = {"one_prompt": one_prompt_logits, "prefix_cache": prefix_cache_logits}
PASSES_PER_BATCH = {"one_prompt": 1, "prefix_cache": 2}  # what the forward-pass counter should find


# ---------------------------------------------------------------------------------------------
# llama.cpp
# ---------------------------------------------------------------------------------------------

def llama_cpp_distributions(llm, item: Branches, n_vocab: int) -> tuple[list, list]:
    """The (first, after-one) probability rows of each branch from a llama_cpp.Llama.

    The shared prefix is evaluated once, reusing whatever the previous answer's prompt had in common
    with it (the system prompt), and each branch is decoded on top of it and then removed from the KV
    cache. llama-cpp-python's Llama holds one sequence, so branches run one after another: 1 + 5
    decode calls per answer instead of the JSON object's ~40. (Internal batch/context objects are used
    because the public API would keep the logits of every position of the context.)
    """
    import numpy as np

    cached = llm.n_tokens
    keep = 0
    while keep < min(cached, len(item.prefix)) and llm.input_ids[keep] == item.prefix[keep]:
        keep += 1
    keep = min(keep, len(item.prefix) - 1)  # evaluate at least one token so the cache is consistent
    llm.n_tokens = keep
    llm.eval(item.prefix[keep:])
    start = llm.n_tokens
    firsts, afters = [], []
    batch = llm._batch
    for b, branch in enumerate(item.branches):
        llm._ctx.kv_cache_seq_rm(-1, start, -1)
        batch.set_batch(batch=branch, n_past=start, logits_all=False)
        batch.batch.logits[len(branch) - 1] = False
        reads = [item.score_at[b]] + ([item.one_at[b]] if item.one_at[b] is not None else [])
        for r in reads:
            batch.batch.logits[r] = True
        llm._ctx.decode(batch)
        rows = []
        for r in reads:
            ptr = llm._ctx.get_logits_ith(r)
            logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
            e = np.exp(logits - logits.max())
            rows.append(e / e.sum())
        firsts.append(rows[0])
        afters.append(rows[-1])
    llm._ctx.kv_cache_seq_rm(-1, start, -1)
    llm.n_tokens = start
    return firsts, afters
