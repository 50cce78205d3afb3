"""How often each model of a finished run urges care and declines to prescribe, from many answers per prompt.

Notebook 05 samples one answer per suite prompt, so its safety counts ("4/6") rest on six draws each: a model
that urges care half the time shows anything from 1/6 to 5/6 from one seed to the next. This script answers the
suite's safety-critical and boundary prompts `--samples` times per model with the run's own evaluation sampling
(temperature, top-p, top-k, answer cap), applies the same checks as notebook 05 (phases/suite_checks.py) and
reports each rate over all answers with its Wilson interval, plus the passes per prompt (which prompts a model
never gets right). A quality measurement, not a speed one; it lives here because it re-runs a finished run's
models instead of being a phase of the pipeline.

Models: base (the preset's model), sft and dpo (the run's merged folders) and the phone file (export's deployed
GGUF, answered through llama-cpp-python as in notebook 05; `--gguf model-q8_0.gguf` takes another file of the
run's export/). `--temperature` / `--top-p` override the run's sampling to ask what another setting would do.

Usage:
    .venv/bin/python bench/bench_safety_rates.py --run demo --samples 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from empathy_workbook.config import data_path, load_config
from empathy_workbook.io import read_json
from empathy_workbook.models.loading import load_tokenizer, resolve_model_path
from empathy_workbook.paths import RunPaths
from empathy_workbook.phases.evaluate import answer_with_gguf, answer_with_transformers, load_suite
from empathy_workbook.phases.suite_checks import answer_checks
from empathy_workbook.tables import rate_interval

from common import device_info, results_path

CHECKED = {"safety_critical": "urges_medical", "boundary_testing": "declines"}
DEFAULT_MODELS = "base,sft,dpo,gguf"
DEFAULT_SAMPLES = 5


def model_sources(run: RunPaths, cfg, gguf_file: str | None) -> dict[str, str]:
    """Where each model of the run lives (gguf: the export's deployed file unless another is named)."""
    gguf_file = gguf_file or read_json(run.root / "export" / "manifest.json")["deploy"]
    return {"base": resolve_model_path(cfg.model.name_or_path), "sft": str(run.root / "sft" / "merged"),
            "dpo": str(run.root / "dpo" / "merged"), "gguf": str(run.root / "export" / gguf_file)}


def answers_of(name: str, source: str, tokenizer_dir: str, prompts: list, sampling) -> list[dict]:
    if name == "gguf":
        return answer_with_gguf(Path(source), load_tokenizer(tokenizer_dir), prompts, sampling)
    return answer_with_transformers(source, prompts, sampling, desc=f"answering ({name})")


def rates(name: str, prompts: list, answers: list[dict], word_budget: int) -> dict:
    """Pass rates of the model's answers with Wilson intervals, and the passes of each prompt."""
    outcomes = {check: [] for check in CHECKED.values()}
    per_prompt: dict[str, int] = {}
    for prompt, answer in zip(prompts, answers, strict=True):
        check = CHECKED[prompt.category]
        passed = answer_checks(answer["text"], prompt.expectations, answer["ended_on_eos"], word_budget)[check]
        outcomes[check].append(passed)
        per_prompt[prompt.prompt_id] = per_prompt.get(prompt.prompt_id, 0) + bool(passed)
    return {"model": name, **{check: rate_interval(values) for check, values in outcomes.items()},
            "per_prompt": per_prompt, "ended_on_eos": sum(a["ended_on_eos"] for a in answers) / len(answers)}


def markdown(rows: list[dict], samples: int) -> str:
    def cell(r):
        return f"{r['passed']}/{r['checked']} ({r['passed'] / r['checked']:.0%}) [{r['low']:.2f}, {r['high']:.2f}]"

    lines = [f"| model | urges medical attention | declines | prompts never passed (of {samples} answers) |",
             "|---|---|---|---|"]
    for r in rows:
        never = ", ".join(p for p, n in r["per_prompt"].items() if n == 0) or "none"
        lines.append(f"| {r['model']} | {cell(r['urges_medical'])} | {cell(r['declines'])} | {never} |")
    return "\n".join(lines)


def results_suffix(args: argparse.Namespace, changes: dict) -> str:
    """One file name per question asked, so that another GGUF file, a model subset, a sampling override or another
    sample count never overwrites the run's main table ("-model-f16", "-dpo-top-p-0.95", "-sft-10-samples")."""
    parts = []
    if args.gguf:
        parts.append(Path(args.gguf).stem)
    elif args.models != DEFAULT_MODELS:
        parts.append(args.models.replace(",", "-"))
    parts += [f"{name.replace('_', '-')}-{value:g}" for name, value in changes.items()]
    if args.samples != DEFAULT_SAMPLES:
        parts.append(f"{args.samples}-samples")
    return "".join(f"-{part}" for part in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="demo", help="finished run under artifacts/runs/")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="answers per prompt and model")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--temperature", type=float, default=None, help="instead of the run's eval sampling")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--gguf", default=None, help="a file in the run's export/ (default: the deployed one), "
                                                     "e.g. model-q8_0.gguf")
    args = parser.parse_args()
    run = RunPaths.for_run(args.run)
    saved = read_json(run.root / "config.json")
    cfg = load_config(saved["preset"])
    sampling = cfg.eval.sampling
    changes = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None}
    suite = [p for p in load_suite(data_path(cfg.eval.suite), cfg.data.system_prompt) if p.category in CHECKED]
    prompts = [p for p in suite for _ in range(args.samples)]  # a prompt's copies sit in one batch, each its own draw
    sampling = dataclasses.replace(sampling, batch_size=len(prompts), **changes)
    sources = model_sources(run, cfg, args.gguf)
    rows = []
    for name in args.models.split(","):
        answers = answers_of(name, sources[name], sources["dpo"], prompts, sampling)
        rows.append(rates(name if name != "gguf" else Path(sources["gguf"]).name, prompts, answers,
                          cfg.eval.word_budget))
        print(markdown(rows[-1:], args.samples), flush=True)
    info = device_info()
    out = results_path(info, f"-safety-rates-{args.run}{results_suffix(args, changes)}")
    out.write_text(json.dumps({"command": " ".join(["bench/bench_safety_rates.py", *sys.argv[1:]]), "device": info,
                               "args": vars(args), "sampling": dataclasses.asdict(sampling), "rows": rows},
                              indent=2) + "\n")
    print(markdown(rows, args.samples))
    print(f"results → {out}")


if __name__ == "__main__":
    main()
