"""Static vs importance-matrix quantization on small models: KL divergence, top-token agreement, size, stop rate.

llama.cpp's perplexity README reports that an importance matrix cuts Q4_K_M's mean KL divergence from F16 on
Llama-3-8B from 0.0313 to 0.0282 (about 10 %); nothing is published for models under 1 B. For each model this
script writes F16 (with the project's template for the family), computes an importance matrix with llama.cpp's
llama-imatrix over the corpus's *training* chats (prompt, answer, end-of-turn token: what export.imatrix does),
quantizes every format twice (plain llama_model_quantize, and llama-quantize --imatrix), and measures on the
corpus's *validation* answers (never seen by the imatrix):

* mean and 99th-percentile KL divergence from F16 and top-token agreement (gguf_quality.quality_report, the
  numbers llama-perplexity --kl-divergence prints), perplexity, file size;
* the stop rate: suite prompts answered through llama-server (llama.cpp's own chat engine, the phone's) with the
  model's phone settings; the share that ends on an end-of-generation token rather than at n_predict.

Models: `tiny` (embedded), `rehearsal` (random weights with Qwen3-0.6B's shapes, 2 layers: real vocabulary and
tensor shapes, meaningless answers), packaged real models by name (`gemma3-270m`: Gemma 3 270M *base*, which
never learnt its chat tokens; `smollm2-135m`: SmolLM2-135M-Instruct as shipped), or `run:<name>` for the
merged DPO model of a finished run.

Usage:
    .venv/bin/python bench/bench_imatrix.py --models tiny,rehearsal,gemma3-270m,smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from empathy_workbook.llamacpp import phone
from empathy_workbook.config import data_path
from empathy_workbook.phases.evaluate import load_suite
from empathy_workbook.phases.export import convert_to_gguf, format_filename, phone_template, quantize_gguf
from empathy_workbook.llamacpp.quality import quality_report, scoring_examples
from empathy_workbook.llamacpp.imatrix import calibration_text, compute_imatrix
from empathy_workbook.llamacpp.server import LlamaServer
from empathy_workbook.llamacpp.inference import gguf_context_length
from empathy_workbook.models.loading import load_tokenizer, resolve_model_path
from empathy_workbook.paths import RunPaths

from common import corpus_records, device_info, results_path

QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")


def model_folder(name: str) -> Path:
    """The HF folder of a model name given on the command line."""
    from empathy_workbook.models.packaged import PACKAGES, ensure_packaged

    if name == "tiny":
        return Path(resolve_model_path("tiny"))
    if name == "rehearsal":
        return Path(resolve_model_path("random:qwen3-0.6b?layers=2"))
    if name.startswith("run:"):
        return RunPaths.for_run(name[4:]).root / "dpo" / "merged"
    if name in PACKAGES:
        return ensure_packaged(name)
    raise SystemExit(f"unknown model {name!r}: tiny, rehearsal, run:<name> or one of {sorted(PACKAGES)}")


def stop_rate(path: Path, tokenizer, suite: list[list[dict]], settings: dict, threads: int) -> dict:
    with LlamaServer(path, n_ctx=settings["n_ctx"], n_threads=threads) as server:
        answers = phone.server_answers(server, tokenizer, suite, settings, seed=1234)
    summary = phone.stop_summary(answers)
    return {"stop_rate": summary["eos_rate"], "end_of_turn_rate": summary["end_of_turn_rate"],
            "mean_new_tokens": sum(a["new_tokens"] for a in answers) / len(answers)}


def bench_model(name: str, args, work: Path) -> list[dict]:
    folder = model_folder(name)
    tokenizer = load_tokenizer(str(folder))
    train, val, cfg = corpus_records(tokenizer)
    out = work / name.replace(":", "-")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    f16 = Path(convert_to_gguf(folder, out / format_filename("F16"), chat_template=phone_template(tokenizer),
                               log=lambda *_: None)["path"])
    importance = compute_imatrix(f16, calibration_text(train, tokenizer), out / "imatrix.gguf", n_ctx=args.imatrix_ctx,
                                 chunks=args.imatrix_chunks, n_threads=args.threads)
    files, seconds = {}, {}
    for quant in args.quants:
        for kind, imatrix in (("static", None), ("imatrix", importance["path"])):
            made = quantize_gguf(f16, out / f"model-{quant.lower()}-{kind}.gguf", quant, args.threads, imatrix)
            files[(quant, kind)], seconds[(quant, kind)] = Path(made["path"]), made["seconds"]
    examples = scoring_examples(val, tokenizer, args.kld_texts)
    quality = quality_report(f16, {f"{q} {k}": p for (q, k), p in files.items()}, examples, n_threads=args.threads)
    suite = [p.messages for p in load_suite(data_path(cfg.eval.suite), cfg.data.system_prompt)][:args.stop_prompts]
    sampling = SimpleNamespace(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, repetition_penalty=1.0)
    settings = phone.phone_settings(tokenizer, sampling, args.word_budget, [r["completion"][0]["content"] for r in train],
                                    prompt_tokens=400, trained_context=gguf_context_length(f16))
    rows = [{"model": name, "format": "F16", "kind": "-", "bytes": f16.stat().st_size,
             "perplexity": quality["perplexity"]["F16"], **stop_rate(f16, tokenizer, suite, settings, args.threads)}]
    for (quant, kind), path in files.items():
        key = f"{quant} {kind}"
        rows.append({"model": name, "format": quant, "kind": kind, "bytes": path.stat().st_size,
                     "kld_mean": quality["kld_mean"][key], "kld_p99": quality["kld_p99"][key],
                     "top_token_agreement": quality["top_token_agreement"][key], "perplexity": quality["perplexity"][key],
                     "quantize_seconds": seconds[(quant, kind)],
                     **stop_rate(path, tokenizer, suite, settings, args.threads)})
    for row in rows:
        row.update(imatrix_seconds=importance["seconds"], imatrix_chunks=args.imatrix_chunks,
                   tokens_scored=quality["tokens_scored"], stop_prompts=len(suite), n_predict=settings["n_predict"],
                   model_seconds=round(time.perf_counter() - started, 1))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | format | kind | MiB | KLD mean | KLD p99 | top-token agr. | PPL | stop rate |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def num(key, digits=4):
            return f"{r[key]:.{digits}f}" if isinstance(r.get(key), float) else "–"
        lines.append(f"| {r['model']} | {r['format']} | {r['kind']} | {r['bytes'] / 2**20:.1f} | {num('kld_mean')} | "
                     f"{num('kld_p99')} | {num('top_token_agreement', 3)} | {num('perplexity', 2)} | "
                     f"{r['stop_rate']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,rehearsal,gemma3-270m,smollm2-135m",
                        help="comma-separated: tiny, rehearsal, run:<name>, or a packaged model name")
    parser.add_argument("--quants", nargs="+", default=list(QUANTS))
    parser.add_argument("--kld-texts", type=int, default=24, help="validation answers scored for KL divergence")
    parser.add_argument("--imatrix-chunks", type=int, default=64, help="llama-imatrix chunks (export's default)")
    parser.add_argument("--imatrix-ctx", type=int, default=512)
    parser.add_argument("--stop-prompts", type=int, default=10, help="suite prompts answered per file")
    parser.add_argument("--word-budget", type=int, default=80, help="sets n_predict as in phone_settings.json")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    info = device_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-imatrix-") as tmp:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            rows += bench_model(name, args, Path(tmp))
            print(markdown([r for r in rows if r["model"] == name]), flush=True)
    out = results_path(info, "-imatrix")
    out.write_text(json.dumps({"command": " ".join(["bench/bench_imatrix.py", *sys.argv[1:]]), "device": info,
                               "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(markdown(rows))
    print(f"results → {out}")


if __name__ == "__main__":
    main()
