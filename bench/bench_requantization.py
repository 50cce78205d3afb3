"""How much of a fine-tune survives quantization when the base model itself came as a quantized file.

The gemma3-270m preset trains on Gemma 3 270M as it is installable here: a Q4_K_M GGUF, dequantized once.
Every base weight therefore already sits on a 4-, 5- or 8-bit grid. A short fine-tune moves weights by less
than half a grid step, so quantizing the merged model with the same recipe can round most of the change
straight back onto the base's grid points. This script measures that on a finished run:

* per block weight, the least-squares fit  Q - base ~ c * (F16 - base)  over the tensor, where F16 is the
  run's exported fine-tune, Q a quantized file made from it and base the packaged GGUF: c = 1 keeps the
  fine-tune's weight change, c = 0 is the base again (unbiased rounding noise adds scatter, not bias);
* optionally (--answers) each file answers the evaluation suite, counting answers that end on the family's
  end-of-turn token, the behaviour the fine-tune taught.

Usage (after `make demo PRESET=gemma3-270m RUN=gemma3`):
    .venv/bin/python bench/bench_requantization.py --run gemma3 --quants Q4_K_M Q8_0 --answers
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from empathy_workbook.config import load_config
from empathy_workbook.models.packaged import assembled_gguf
from empathy_workbook.paths import RunPaths
from empathy_workbook.phases.export import format_filename, quantize_gguf

from common import device_info, results_path


def dequantized_blocks(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (GGUF type, float32 values) for every transformer-block weight matrix of a GGUF."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, dequantize(t.data, t.tensor_type).astype(np.float32))
            for t in reader.tensors if t.name.startswith("blk.") and t.name.endswith(".weight") and t.data.ndim == 2}


def kept_share(base: np.ndarray, tuned: np.ndarray, quantized: np.ndarray) -> float:
    """c of the fit quantized - base ~ c * (tuned - base): the share of the fine-tune's change that survives."""
    change = (tuned - base).ravel().astype(np.float64)
    return float(np.dot((quantized - base).ravel(), change) / np.dot(change, change))


def retention_by_base_type(base: dict, tuned: dict, quantized: dict) -> dict[str, dict]:
    """Median kept share and tensor count, grouped by the type the base file stored each tensor in."""
    groups: dict[str, list[float]] = {}
    for name, (base_type, base_values) in base.items():
        groups.setdefault(base_type, []).append(kept_share(base_values, tuned[name][1], quantized[name][1]))
    return {kind: {"tensors": len(shares), "median_kept_share": round(statistics.median(shares), 3)}
            for kind, shares in sorted(groups.items())}


def end_of_turn_rate(path: Path, cfg) -> dict:
    """Answer the evaluation suite with one GGUF file; share of answers ending on the end-of-turn token."""
    from empathy_workbook.config import data_path
    from empathy_workbook.models.loading import load_tokenizer, resolve_model_path
    from empathy_workbook.phases import evaluate as ev

    tokenizer = load_tokenizer(resolve_model_path(cfg.model.name_or_path))
    suite = ev.load_suite(data_path(cfg.eval.suite), cfg.data.system_prompt)
    started = time.perf_counter()
    answers = ev.answer_with_gguf(path, tokenizer, suite, cfg.eval.sampling, cfg.eval.n_threads)
    return {"answers": len(answers), "ended_on_eos_rate": round(sum(a["ended_on_eos"] for a in answers) / len(answers), 3),
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a finished run of a gguf-package preset (e.g. gemma3)")
    parser.add_argument("--quants", nargs="+", default=["Q4_K_M", "Q8_0"])
    parser.add_argument("--answers", action="store_true", help="also answer the eval suite with F16 and each quant")
    args = parser.parse_args()

    paths = RunPaths.for_run(args.run)
    cfg = load_config(json.loads(paths.config_json.read_text())["preset"])
    if not cfg.model.name_or_path.startswith("gguf-package:"):
        raise SystemExit(f"run {args.run!r} is not built on a packaged GGUF: there is no quantized base to compare with")
    export_dir = paths.root / "export"
    f16 = export_dir / format_filename("F16")
    base = dequantized_blocks(assembled_gguf(cfg.model.name_or_path.split(":", 1)[1]))
    tuned = dequantized_blocks(f16)
    rows = {"F16": {"answers": end_of_turn_rate(f16, cfg)} if args.answers else {}}
    with tempfile.TemporaryDirectory() as scratch:
        for quant in args.quants:
            made = export_dir / format_filename(quant)
            if not made.exists():
                made = Path(quantize_gguf(f16, Path(scratch) / format_filename(quant), quant)["path"])
            rows[quant] = {"by_base_type": retention_by_base_type(base, tuned, dequantized_blocks(made))}
            if args.answers:
                rows[quant]["answers"] = end_of_turn_rate(made, cfg)
            print(quant, json.dumps(rows[quant]))
    command = "bench/bench_requantization.py --run " + args.run + " --quants " + " ".join(args.quants) + \
        (" --answers" if args.answers else "")
    info = device_info()
    out = results_path(info, "-requantization")
    out.write_text(json.dumps({"command": command, "device": info, "preset": cfg.preset, "run": args.run,
                               "files": rows}, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
