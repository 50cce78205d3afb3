"""Importance-matrix quantization with llama.cpp's own tools (llama-imatrix, llama-quantize --imatrix).

A K-quant rounds each block of weights to a few levels; with an importance matrix it chooses those levels to
keep the weights that matter most for real activations (the mean squared input of every column, measured by
running the F16 model over calibration text). Here the calibration text is the training chats themselves
(template, question, answer, end-of-turn token): the activations the phone will see. llama.cpp reports a 10 %
lower Q4_K_M KL divergence on Llama-3-8B with an imatrix; for models under 1 B the benchmark in
bench/bench_imatrix.py measures it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from ..chat import render_training_text
from .server import tool_path


def calibration_text(records: list[dict], tokenizer, max_records: int = 0) -> str:
    """The training chats as llama.cpp reads them: prompt rendered with the template + answer + end of turn."""
    chosen = records[:max_records] if max_records > 0 else records
    parts = []
    for record in chosen:
        prompt, completion = render_training_text(tokenizer, record["prompt"], record["completion"][0]["content"])
        parts.append(prompt + completion)
    return "\n".join(parts)


def _run(cmd: list[str], log_path: Path, what: str) -> float:
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join(Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-12:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); full log in {log_path}:\n{tail}")
    return time.perf_counter() - started


def compute_imatrix(f16_path: Path, text: str, out_path: Path, n_ctx: int = 512, chunks: int = -1,
                    n_threads: int = 0) -> dict:
    """Run llama-imatrix over the calibration text; returns the file, chunk settings and seconds.

    Control tokens in the text (<|im_start|>, <end_of_turn>) are parsed as such (--parse-special), so the
    template's markers reach the model as the tokens it was trained on.
    """
    out_path = Path(out_path)
    text_path = out_path.with_suffix(".txt")
    text_path.write_text(text, encoding="utf-8")
    threads = n_threads if n_threads > 0 else (os.cpu_count() or 1)
    partial = out_path.with_name(f".{out_path.name}.partial")
    cmd = [str(tool_path("llama-imatrix")), "-m", str(f16_path), "-f", str(text_path), "-o", str(partial),
           "-c", str(n_ctx), "--chunks", str(chunks), "--parse-special", "--no-ppl", "-t", str(threads)]
    seconds = _run(cmd, out_path.with_suffix(".log"), "llama-imatrix")
    os.replace(partial, out_path)
    return {"path": str(out_path), "seconds": round(seconds, 2), "n_ctx": n_ctx, "chunks": chunks,
            "text_chars": len(text)}


def quantize_with_imatrix(f16_path: Path, out_path: Path, quant: str, imatrix_path: Path, n_threads: int = 0) -> float:
    """llama-quantize --imatrix: F16 -> quant with the importance matrix; returns seconds (file written whole)."""
    out_path = Path(out_path)
    threads = n_threads if n_threads > 0 else (os.cpu_count() or 1)
    partial = out_path.with_name(f".{out_path.name}.partial")
    cmd = [str(tool_path("llama-quantize")), "--imatrix", str(imatrix_path), str(f16_path), str(partial), quant,
           str(threads)]
    seconds = _run(cmd, out_path.with_name(f"{out_path.stem}.quantize.log"), f"llama-quantize {quant} --imatrix")
    os.replace(partial, out_path)
    return seconds
