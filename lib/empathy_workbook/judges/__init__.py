"""Judges: score one answer at a time on five empathy criteria and an overall 1-10 (see base.py).

    judge = get_judge(JudgeConfig(backend="rubric"))
    results = judge.score(prompts, responses)        # list[JudgeResult], same order

The package's layers, top to bottom (each imports only from the ones below it):
- this file: ``get_judge``, which imports a backend only when a config asks for it, and the interface
  names callers use, re-exported from ``base``;
- ``rubric``, ``transformers``, ``llamacpp``: the backends;
- ``base``: the interface, the LLM judges' prompt and parser, the score cache;
- ``probability``: G-Eval scoring from the score tokens' probabilities.
``probe`` (robustness checks of any judge) builds on ``base`` too.
"""

from __future__ import annotations

from pathlib import Path

from ..config import JudgeConfig
from .base import (CRITERIA, FIELDS, Judge, JudgeParseError, JudgeResult, json_schema, judge_messages,
                   model_identity, parse_failures, parse_judgment)

__all__ = ["CRITERIA", "FIELDS", "Judge", "JudgeParseError", "JudgeResult", "get_judge", "json_schema",
           "judge_messages", "model_identity", "parse_failures", "parse_judgment"]


def get_judge(cfg: JudgeConfig, cache_dir: Path | None = None, use_cache: bool = True, **kwargs) -> Judge:
    """The judge a JudgeConfig describes. Extra keyword arguments go to the backend (device, progress, seed,
    order = the criteria's order in the prompt)."""
    # imported here, not at the top: a backend loads its heavy libraries only when a config asks for it,
    # and this package's face stays above the backends (they import .base, never this file)
    if cfg.backend == "rubric":
        from .rubric import RubricJudge

        return RubricJudge(cfg, cache_dir, use_cache, kwargs.get("order", CRITERIA))
    if cfg.backend == "transformers":
        from .transformers import TransformersJudge

        return TransformersJudge(cfg, cache_dir, use_cache, **kwargs)
    if cfg.backend == "llama_cpp":
        from .llamacpp import LlamaCppJudge

        return LlamaCppJudge(cfg, cache_dir, use_cache, **kwargs)
    raise ValueError(f"judge.backend={cfg.backend!r}: use 'rubric', 'transformers' or 'llama_cpp'")
