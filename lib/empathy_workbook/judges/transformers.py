"""The transformers judge: an instruction model (Qwen3-4B in the real preset) asked, non-thinking and at
low temperature, for the JSON score object, or read from its next-token probabilities (probability.py)."""

from __future__ import annotations

from pathlib import Path

from ..config import JudgeConfig, SamplingConfig
from .base import (CRITERIA, PROBABILITY_VERSION, PROMPT_VERSION, Judge, JudgeResult, judge_messages,
                     judge_prompt_ids, model_identity, probability_result)
from .probability import LAYOUTS, Branches, ScoreTokens, build_branches, criterion_prefill, score_tokens


class TransformersJudge(Judge):
    """An instruction model through transformers: batched, non-thinking, low temperature."""

    name = "transformers"

    def __init__(self, cfg: JudgeConfig, cache_dir: Path | None = None, use_cache: bool = True,
                 device: str | None = None, progress: bool = True, seed: int = 1234, order: tuple = CRITERIA):
        self.device, self.progress, self.seed = device, progress, seed
        self._model = self._tokenizer = self._score_tokens = None
        self.name = f"transformers:{Path(cfg.model).name}"
        super().__init__(cfg, cache_dir, use_cache, order)

    @property
    def identity(self) -> str:
        c = self.cfg
        if c.scoring == "probability":  # no sampling: temperature, budget and seed cannot change a score
            return (f"transformers|{model_identity(c.model)}|prompt-v{PROMPT_VERSION}|scoring=probability|"
                    f"v{PROBABILITY_VERSION}{self.order_tag()}")
        return (f"transformers|{model_identity(c.model)}|prompt-v{PROMPT_VERSION}|T={c.temperature}|"
                f"max={c.max_new_tokens}|seed={self.seed}{self.order_tag()}")

    def _load(self):
        if self._model is None:
            from ..models.loading import cuda_available, load_causal_lm, load_tokenizer

            device = self.device or ("cuda" if cuda_available() else "cpu")
            precision = "fp32" if device == "cpu" else "bf16"
            self._tokenizer = load_tokenizer(self.cfg.model)
            self._model = load_causal_lm(self.cfg.model, device, precision)
            self._passes = 0
            decoder = getattr(self._model, self._model.base_model_prefix)
            decoder.register_forward_pre_hook(self._count_pass)
        return self._model, self._tokenizer

    def _count_pass(self, module, args):
        self._passes += 1

    def sampling(self, attempt: int) -> SamplingConfig:
        c = self.cfg
        return SamplingConfig(temperature=c.temperature, top_p=1.0, top_k=20, max_new_tokens=c.max_new_tokens,
                              batch_size=c.batch_size, seed=self.seed + 7919 * attempt)

    def raw_outputs(self, prompts: list[str], responses: list[str], attempt: int) -> list:
        if self.cfg.scoring == "probability":
            return self.probability_results(prompts, responses)
        from tqdm.auto import tqdm

        from ..models.loading import generate

        model, tokenizer = self._load()
        conversations = [judge_messages(p, r, order=self.order) for p, r in zip(prompts, responses)]
        order = sorted(range(len(conversations)), key=lambda i: len(prompts[i]) + len(responses[i]))
        texts: list[str] = [""] * len(conversations)
        size = self.cfg.batch_size
        chunks = range(0, len(order), size)
        for start in tqdm(chunks, desc="judging" if not attempt else "judging (retry)", disable=not self.progress):
            chunk = order[start:start + size]  # one batch per call, so its passes can be counted
            before = self._passes
            out = generate(model, tokenizer, [conversations[i] for i in chunk], self.sampling(attempt),
                           progress=False)
            self.stats["forward_passes"] += (self._passes - before) * len(chunk)
            self.stats["answers_run"] += len(chunk)
            for i, o in zip(chunk, out):
                texts[i] = o["text"]
        return texts

    def score_tokens(self) -> ScoreTokens:
        """Ids of the score tokens 1-10 under this judge's tokenizer."""
        if self._score_tokens is None:
            _, tokenizer = self._load()
            self._score_tokens = score_tokens(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._score_tokens

    def branches(self, prompt: str, response: str) -> Branches:
        """One answer's probability-scoring prompt: shared prefix + one branch per criterion."""
        _, tokenizer = self._load()
        tokens = self.score_tokens()
        messages = judge_messages(prompt, response, order=self.order)
        contexts = []
        for name in self.order:
            ids = judge_prompt_ids(tokenizer, messages, criterion_prefill(name) + "5")
            if ids[-1] != tokens.first[5]:  # the score must start a token of its own here too
                raise ValueError(f"judge prompt for {name!r}: the score is not a token of its own "
                                 f"({tokenizer.convert_ids_to_tokens(ids[-3:])})")
            contexts.append(ids[:-1])
        return build_branches(contexts, tokens)

    def probability_results(self, prompts: list[str], responses: list[str]) -> list[JudgeResult]:
        """Scores from next-token probabilities, cfg.batch_size answers per forward pass (or two)."""
        import torch
        from tqdm.auto import tqdm

        model, _ = self._load()
        tokens = self.score_tokens()
        items = [self.branches(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(items)), key=lambda i: len(items[i].prefix))  # similar lengths: less padding
        forward = LAYOUTS[self.cfg.probability_layout]
        device = next(model.parameters()).device
        results: list[JudgeResult | None] = [None] * len(items)
        size = self.cfg.batch_size
        for start in tqdm(range(0, len(order), size), desc="judging (probabilities)", disable=not self.progress):
            chunk = order[start:start + size]
            before = self._passes
            firsts, afters = forward(model, [items[i] for i in chunk], device)
            self.stats["forward_passes"] += (self._passes - before) * len(chunk)
            self.stats["answers_run"] += len(chunk)
            for i, first, after in zip(chunk, firsts, afters):
                results[i] = probability_result(self.order, first, after, tokens)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Free the judge model's memory."""
        self._model = self._tokenizer = None
