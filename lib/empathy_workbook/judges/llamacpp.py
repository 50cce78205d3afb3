"""The llama.cpp judge: the LLM judges' prompt on a GGUF file through llama-cpp-python, so a CPU can judge.

The output is forced into the JSON score object by a grammar built from its JSON schema, or the scores are
read from next-token probabilities (probability.py). The prompt is rendered with the GGUF's own chat
template and tokenized by llama.cpp, with the question and the answer kept as text (llamacpp.inference.GGUFTokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import JudgeConfig
from ..family import family_of_template
from ..llamacpp.inference import GGUFTokenizer, open_llama
from .base import (CRITERIA, PROBABILITY_VERSION, PROMPT_VERSION, Judge, JudgeResult, json_schema,
                     judge_messages, judge_prompt_ids, model_identity, probability_result)
from .probability import build_branches, criterion_prefill, llama_cpp_distributions, score_tokens


class LlamaCppJudge(Judge):
    """The same prompt on a GGUF through llama-cpp-python; a JSON-schema grammar fixes the output's shape."""

    name = "llama_cpp"

    def __init__(self, cfg: JudgeConfig, cache_dir: Path | None = None, use_cache: bool = True,
                 progress: bool = True, seed: int = 1234, n_threads: int = 0, order: tuple = CRITERIA):
        path = Path(cfg.model)
        if not path.is_file():
            raise FileNotFoundError(f"judge.model={cfg.model!r} is not a file: the llama_cpp judge needs a .gguf "
                                    "file (notebook 04 writes one; any instruction model in GGUF works)")
        self.progress, self.seed, self.n_threads = progress, seed, n_threads
        self._llm = self._grammar = self._tokenizer = self._score_tokens = None
        self.name = f"llama_cpp:{path.name}"
        super().__init__(cfg, cache_dir, use_cache, order)

    @property
    def identity(self) -> str:
        c = self.cfg
        if c.scoring == "probability":
            return (f"llama_cpp|{model_identity(c.model)}|prompt-v{PROMPT_VERSION}|scoring=probability|"
                    f"v{PROBABILITY_VERSION}{self.order_tag()}")
        return (f"llama_cpp|{model_identity(c.model)}|prompt-v{PROMPT_VERSION}|T={c.temperature}|"
                f"max={c.max_new_tokens}|seed={self.seed}|grammar=json-schema{self.order_tag()}")

    def gpu_layers(self) -> int:
        """Layers to offload: cfg.n_gpu_layers (-1 = all) when this llama.cpp build can offload and CUDA is
        present, else 0 (decided at run time, so one preset serves a laptop and a GPU box)."""
        import llama_cpp

        from ..models.loading import cuda_available

        return self.cfg.n_gpu_layers if llama_cpp.llama_supports_gpu_offload() and cuda_available() else 0

    def _load(self):
        if self._llm is None:
            import llama_cpp

            # n_batch = n_ctx: a whole judge prompt is evaluated in one decode call (prompt processing batched)
            self._llm = open_llama(self.cfg.model, self.cfg.n_ctx, self.n_threads, n_batch=self.cfg.n_ctx,
                                   seed=self.seed, n_gpu_layers=self.gpu_layers())
            self._passes = 0
            decode = self._llm._ctx.decode

            def counted(batch):  # count the sequential decode calls, as the transformers judge counts passes
                self._passes += 1
                return decode(batch)
            self._llm._ctx.decode = counted
            template = self._llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise ValueError(f"{self.cfg.model}: no tokenizer.chat_template in the GGUF metadata; the judge "
                                 "prompt cannot be formatted")
            profile = family_of_template(template)  # the judge may be another family than the model trained
            self._tokenizer = GGUFTokenizer(self._llm, template, bos_token=profile.bos, eos_token=profile.end_of_turn)
            self._grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(json_schema()), verbose=False)
        return self._llm

    def prompt_text(self, prompt: str, response: str, messages: list[dict] | None = None) -> str:
        """The rendered judge prompt, non-thinking (the GGUF's own template, enable_thinking=False), to read."""
        from ..chat import render_prompt

        self._load()
        return render_prompt(self._tokenizer, messages or judge_messages(prompt, response, order=self.order))

    def prompt_ids(self, messages: list[dict], prefill: str = "") -> list[int]:
        """What the judge model is given: judge_prompt_ids with llama.cpp's tokenizer (message text stays text)."""
        self._load()
        return judge_prompt_ids(self._tokenizer, messages, prefill)

    def _encode(self, text: str) -> list[int]:
        """Ids of the judge's own text (score tokens), control tokens parsed."""
        return self._load().tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def raw_outputs(self, prompts: list[str], responses: list[str], attempt: int) -> list:
        if self.cfg.scoring == "probability":
            return self.probability_results(prompts, responses)
        from tqdm.auto import tqdm

        llm = self._load()
        outs = []
        items = list(zip(prompts, responses))
        for number, (p, r) in enumerate(tqdm(items, desc="judging (gguf)", disable=not self.progress)):
            ids = self.prompt_ids(judge_messages(p, r, order=self.order))
            if len(ids) + self.cfg.max_new_tokens > self.cfg.n_ctx:
                outs.append(f"(not run: the judge prompt has {len(ids)} tokens, more than judge.n_ctx="
                            f"{self.cfg.n_ctx} minus judge.max_new_tokens={self.cfg.max_new_tokens})")
                continue
            before = self._passes
            out = llm.create_completion(ids, max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                        top_k=20, top_p=1.0, min_p=0.0, grammar=self._grammar,
                                        seed=self.seed + 7919 * attempt + number)
            self.stats["forward_passes"] += self._passes - before
            self.stats["answers_run"] += 1
            outs.append(out["choices"][0]["text"])
        return outs

    def probability_results(self, prompts: list[str], responses: list[str]) -> list[JudgeResult]:
        """Scores from next-token probabilities: the prefix once (its common start with the previous
        prompt reused from the KV cache), then the five short branches."""
        from tqdm.auto import tqdm

        llm = self._load()
        if self._score_tokens is None:
            self._score_tokens = score_tokens(self._encode)
        tokens, results = self._score_tokens, []
        for p, r in tqdm(list(zip(prompts, responses)), desc="judging (gguf, probabilities)",
                         disable=not self.progress):
            messages = judge_messages(p, r, order=self.order)
            contexts = []
            for name in self.order:
                ids = self.prompt_ids(messages, criterion_prefill(name) + "5")
                if ids[-1] != tokens.first[5]:
                    raise ValueError(f"judge prompt for {name!r}: the score is not a token of its own")
                contexts.append(ids[:-1])
            if len(contexts[0]) + 4 > self.cfg.n_ctx:
                raise ValueError(f"a judge prompt has {len(contexts[0])} tokens, more than judge.n_ctx="
                                 f"{self.cfg.n_ctx}: raise judge.n_ctx")
            before = self._passes
            firsts, afters = llama_cpp_distributions(llm, build_branches(contexts, tokens), llm.n_vocab())
            self.stats["forward_passes"] += self._passes - before
            self.stats["answers_run"] += 1
            results.append(probability_result(self.order, firsts, afters, tokens))
        return results

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
        self._llm = None
