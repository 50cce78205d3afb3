"""Run every benchmark (not tests), each in its own process, and write bench/results/<device>-<date>.json.

    python bench/run_all.py              # CUDA: full-size runs; CPU: the CPU-sized variant (see --cpu-small)
    python bench/run_all.py --cpu-small  # force the CPU-sized variant (few steps, short sequences)
    python bench/run_all.py --only sft,dpo --skip export

Prints one markdown table of all measurements, the export table, and a projection of the full-data
run (3,150 rows x 3 epochs of SFT, 3,150 sampled answers, 6,300 judged answers, ~2,300 DPO pairs, GGUF)
computed from the measured throughput of this machine. Nothing here is asserted: benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

HERE = Path(__file__).resolve().parent

# The full-data run the projection describes (design document + TECH-NOTES numbers).
# Token counts per item are Qwen3-vocabulary estimates: generation prompt = 61 template/system tokens
# + ~90 question tokens; judge prompt = 407 template/rubric tokens + question + a ~250-token answer;
# judge answer = the 41-token JSON object + <|im_end|>.
WORKLOAD = {
    "sft_rows": 3150, "sft_tokens_per_row": 400, "sft_epochs": 3, "val_rows": 350,
    "gen_prompts": 3150, "gen_new_tokens": 300, "gen_prompt_tokens": 150,
    "judge_responses": 6300, "judge_prompt_tokens": 750, "judge_json_tokens": 42,
    "dpo_pairs": 2300, "dpo_tokens_per_pair": 800,
}
DESIGN_DOC_MINUTES = {"sft": "30–60", "preferences": "120–240", "dpo": "20–40", "export": "5–10"}


def plan(cuda: bool, small: bool) -> list[tuple[str, str, list[str]]]:
    """(stage, label, argv) of every benchmark process, cheapest and most informative first.

    SFT and DPO go through the project's phase code when lib/empathy_workbook/phases/{sft,dpo}.py exist
    (bench_sft/bench_dpo --path auto), else through TRL directly.
    """
    runs = [("padding", "padding shares (no model)", ["bench_padding.py"])]
    if small:
        runs += [
            ("sft", "SFT synthetic, defaults", ["bench_sft.py", "--steps", "2"]),
            ("sft-batching", "SFT batching A/B", ["bench_batching.py"]),
            ("dpo", "DPO synthetic", ["bench_dpo.py", "--steps", "2"]),
            ("generate", "sampling 1/8/32", ["bench_generate.py"]),
            ("judge", "judge 4B, 2 and 4 layers", ["bench_judge.py"]),
            ("bucketing", "bucketing on the tiny model", ["bench_bucketing.py"]),
        ]
    else:
        runs += [
            ("sft", "SFT synthetic, defaults", ["bench_sft.py"]),
            ("sft", "SFT synthetic, no checkpointing", ["bench_sft.py", "--grad-ckpt", "off"]),
            ("sft", "SFT synthetic, batch 4 (design doc)", ["bench_sft.py", "--batch", "4"]),
            ("sft", "SFT corpus, padded", ["bench_sft.py", "--data", "corpus", "--seq-len", "1024"]),
            ("sft", "SFT corpus, padding-free", ["bench_sft.py", "--data", "corpus", "--seq-len", "1024",
                                                 "--padding-free"]),
            ("sft-batching", "SFT batching A/B", ["bench_batching.py"]),
            ("dpo", "DPO synthetic", ["bench_dpo.py"]),
            ("dpo", "DPO synthetic, no checkpointing", ["bench_dpo.py", "--grad-ckpt", "off"]),
            ("generate", "sampling 1/8/32/64/128", ["bench_generate.py", "--batches", "1,8,32,64,128"]),
            ("judge", "judge 4B batch 8", ["bench_judge.py", "--batch", "8"]),
            ("judge", "judge 4B batch 32", ["bench_judge.py", "--batch", "32"]),
            ("bucketing", "bucketing on the tiny model", ["bench_bucketing.py"]),
            ("bucketing", "bucketing on Qwen3-0.6B", ["bench_bucketing.py", "--model", "qwen3-0.6b", "--prompts", "256",
                                                      "--batch", "32", "--new-tokens", "64"]),
            ("generation-options", "fixed vs token-budget vs continuous batching",
             ["bench_generation_options.py", "--prompts", "128", "--batch", "32", "--new-tokens", "320"]),
        ]
        if cuda:
            runs += [("sft", "SFT synthetic, 16-bit base", ["bench_sft.py", "--base", "16bit"]),
                     ("sft", "SFT synthetic, transformers+PEFT (no Unsloth)", ["bench_sft.py", "--no-unsloth"]),
                     ("sft", "SFT synthetic, TRL direct", ["bench_sft.py", "--path", "trl"]),
                     ("sft", "SFT synthetic, Unsloth direct", ["bench_sft.py", "--path", "unsloth"])]
    if (HERE / "export_qwen3_0_6b.py").exists():
        runs.append(("export", "GGUF convert/quantize/decode", ["export_qwen3_0_6b.py", "--threads", "0" if cuda else "2"]))
    return runs


def run_one(stage: str, label: str, argv: list[str], small: bool, timeout: int) -> tuple[list[dict], dict]:
    """Run one benchmark process; returns its rows (or an error row) and a log entry."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        out = Path(work) / "rows.json"
        cmd = [sys.executable, str(HERE / argv[0]), *argv[1:]]
        if stage != "export":
            cmd += ["--json-out", str(out)] + (["--cpu-small"] if small else [])
        common.log(f"\n=== {stage}: {label} ===\n$ {' '.join(cmd[1:])}")
        try:
            done = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
            ok, tail = done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {timeout} s"
        seconds = time.perf_counter() - started
        # the machine may be shared: the 1-minute load average says how busy it was during this benchmark
        entry = {"stage": stage, "label": label, "argv": argv, "ok": ok, "seconds": round(seconds, 1),
                 "load_average_after": os.getloadavg()[0]}
        if not ok:
            common.log(tail)
            entry["error_tail"] = tail
            return [], entry
        if stage == "export":
            return export_rows(), entry
        rows = json.loads(out.read_text())["rows"]
        for row in rows:
            row["label"] = label
        common.log(common.markdown_table(rows))
        return rows, entry


def export_rows() -> list[dict]:
    """Rows from the export engineer's script (it writes bench/results/cpu-<date>-export.json)."""
    found = sorted(common.RESULTS_DIR.glob("*-export.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return []
    result = json.loads(found[-1].read_text())
    rows = []
    for fmt, info in result["formats"].items():
        speed = result.get("decode", {}).get(fmt, {})
        rows.append({"stage": "export", "what": f"GGUF {fmt}", "format": fmt, "size_mb": info["bytes"] / 1e6,
                     "bits_per_weight": info.get("bits_per_weight"), "seconds_to_produce": info["seconds"],
                     "decode_tok_s": speed.get("decode_tok_s"), "prompt_tok_s": speed.get("prompt_tok_s"),
                     "threads": result.get("machine", {}).get("threads_used"), "source_file": found[-1].name})
    return rows


def export_table(rows: list[dict]) -> str:
    lines = ["| GGUF format | size (MB) | bits/weight | time to produce (s) | llama.cpp decode tok/s | prompt tok/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['size_mb']:,.0f} | {r['bits_per_weight'] or 0:.2f} | "
                     f"{r['seconds_to_produce']:.1f} | {common._fmt(r['decode_tok_s'])} | {common._fmt(r['prompt_tok_s'])} |")
    return "\n".join(lines)


def pick(rows: list[dict], stage: str, contains: str = "", batch: int | None = None, extrapolated=None):
    for r in rows:
        if r["stage"] != stage or contains not in r.get("label", "") + r["what"]:
            continue
        if batch is not None and r["batch"] != batch:
            continue
        if extrapolated is not None and r.get("extrapolated") != extrapolated:
            continue
        return r
    return None


def workload_facts(preset: str = "qwen3-0.6b") -> dict:
    """Hardware-independent size of the full-data run: model FLOPs per stage and the number of sequential
    decode steps (each one a full forward pass that cannot start before the previous one ends), with the
    batch sizes and caps of the preset."""
    from empathy_workbook.config import load_config

    cfg = load_config(preset)
    w = WORKLOAD
    small = lambda ctx, head=True: common.forward_flops_per_token("qwen3-0.6b", ctx, lm_head=head)  # noqa: E731
    judge_fwd = lambda ctx, head=True: common.forward_flops_per_token("qwen3-4b", ctx, lm_head=head)  # noqa: E731
    sft = cfg.sft.train
    sft_tokens = w["sft_rows"] * w["sft_tokens_per_row"] * w["sft_epochs"]
    updates = math.ceil(w["sft_rows"] / (sft.batch_size * sft.grad_accum)) * w["sft_epochs"]
    evals = updates // sft.eval_steps + 1  # + eval_on_start
    eval_tokens = evals * w["val_rows"] * w["sft_tokens_per_row"]
    per_row = w["sft_tokens_per_row"]
    gen, judge = cfg.preferences.sampling, cfg.preferences.judge
    gen_batches = math.ceil(w["gen_prompts"] / gen.batch_size)
    judge_batches = math.ceil(w["judge_responses"] / judge.batch_size)
    return {
        "preset": preset,
        "sft": {"tokens": sft_tokens, "updates": updates,
                "pflop": 2 * small(per_row // 2) * sft_tokens / 1e15,
                "pflop_with_checkpointing": 3 * small(per_row // 2) * sft_tokens / 1e15},
        "sft_validation": {"evaluations": evals, "tokens": eval_tokens, "pflop": small(per_row // 2) * eval_tokens / 1e15,
                           "share_of_training_work_with_checkpointing": eval_tokens / (3 * sft_tokens),
                           "eval_steps": sft.eval_steps},
        "sampling": {"batches": gen_batches, "max_new_tokens": gen.max_new_tokens,
                     "sequential_decode_steps": gen_batches * gen.max_new_tokens,
                     "pflop": (w["gen_prompts"] * w["gen_prompt_tokens"] * small(w["gen_prompt_tokens"] // 2, False)
                               + w["gen_prompts"] * w["gen_new_tokens"] * small(w["gen_prompt_tokens"] + 150)) / 1e15},
        "judge": {"batches": judge_batches, "batch_size": judge.batch_size, "max_new_tokens": judge.max_new_tokens,
                  "sequential_decode_steps_if_json_only": judge_batches * w["judge_json_tokens"],
                  "sequential_decode_steps_at_cap": judge_batches * judge.max_new_tokens,
                  "pflop": (w["judge_responses"] * w["judge_prompt_tokens"]
                            * judge_fwd(w["judge_prompt_tokens"] // 2, False)
                            + w["judge_responses"] * w["judge_json_tokens"] * judge_fwd(w["judge_prompt_tokens"])) / 1e15},
        "dpo": {"tokens": w["dpo_pairs"] * w["dpo_tokens_per_pair"],
                "pflop": 3 * small(w["dpo_tokens_per_pair"] // 4) * w["dpo_pairs"] * w["dpo_tokens_per_pair"] / 1e15},
    }


def projection(rows: list[dict]) -> list[dict]:
    """Full-data stage times on THIS machine from its measured throughput (formula shown per line)."""
    w = WORKLOAD
    out = []

    def add(stage, formula, seconds, source):
        out.append({"stage": stage, "formula": formula, "seconds": seconds, "source": source,
                    "design_doc_minutes": DESIGN_DOC_MINUTES.get(stage.split()[0])})

    sft_tokens = w["sft_rows"] * w["sft_tokens_per_row"] * w["sft_epochs"]
    for label in ("SFT synthetic, defaults", "SFT synthetic, no checkpointing"):
        r = pick(rows, "sft", label)
        if r:
            add("sft", f"{sft_tokens:,} tokens / {r['tokens_per_s']:.1f} tok/s", sft_tokens / r["tokens_per_s"], label)
    gen = max((r for r in rows if r["stage"] == "generate"), key=lambda r: r["batch"], default=None)
    if gen:
        b = gen["batch"]
        batches = math.ceil(w["gen_prompts"] / b)
        prefill = gen["extra"]["prefill_s"] * w["gen_prompt_tokens"] / gen["seq_len"]  # prompt pass ∝ prompt length
        step = gen["seconds_per_step"]
        add("preferences (sampling)", f"{batches} batches of {b} × ({prefill:.2f} s prompt + {w['gen_new_tokens']} × "
            f"{step:.3f} s/step)", batches * (prefill + w["gen_new_tokens"] * step), gen["label"])
    judge = pick(rows, "judge", extrapolated=True) or next(
        (r for r in rows if r["stage"] == "judge" and r["layers"] == 36), None)
    if judge:
        b = judge["batch"]
        batches = math.ceil(w["judge_responses"] / b)
        prefill = judge["extra"]["prefill_s"] * w["judge_prompt_tokens"] / judge["seq_len"]
        step = judge["seconds_per_step"]
        label = "extrapolated to 36 layers" if judge.get("extrapolated") else "measured"
        add("preferences (judge)", f"{batches} batches of {b} × ({prefill:.1f} s prompt + {w['judge_json_tokens']} × "
            f"{step:.3f} s/step) [{label}]", batches * (prefill + w["judge_json_tokens"] * step), judge["label"])
    dpo = pick(rows, "dpo")
    if dpo:
        tokens = w["dpo_pairs"] * w["dpo_tokens_per_pair"]
        add("dpo", f"{tokens:,} tokens / {dpo['tokens_per_s']:.1f} tok/s", tokens / dpo["tokens_per_s"], dpo["label"])
    export = [r for r in rows if r["stage"] == "export"]
    if export:
        seconds = sum(r["seconds_to_produce"] for r in export if r["format"] in ("F16", "Q4_K_M"))
        add("export", "F16 conversion + Q4_K_M quantization (measured)", seconds, "export_qwen3_0_6b.py")
    return out


def projection_table(proj: list[dict], device: str) -> str:
    lines = [f"| stage | formula (full data, this {device}) | projected | design doc (RTX 5090) |",
             "|---|---|---:|---:|"]
    for p in proj:
        lines.append(f"| {p['stage']} | {p['formula']} | {human(p['seconds'])} | {p['design_doc_minutes'] or '–'} min |")
    return "\n".join(lines)


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-small", "--quick", dest="small", action="store_true",
                        help="CPU-sized variant: few steps, short sequences (the default when no GPU is present)")
    parser.add_argument("--full", action="store_true", help="full-size runs even on a CPU (slow)")
    parser.add_argument("--only", help="comma-separated stages to run (padding,sft,dpo,generate,judge,bucketing,"
                        "generation-options,export)")
    parser.add_argument("--skip", help="comma-separated stages to leave out")
    parser.add_argument("--reuse-export", action="store_true",
                        help="use today's bench/results/*-export.json instead of running the export benchmark again")
    parser.add_argument("--timeout", type=int, help="seconds per benchmark process (default 600 CPU-small, 1800 full)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/<device>-<date>.json)")
    args = parser.parse_args()

    info = common.device_info()
    cuda = info["device"] == "cuda"
    small = args.small or (not cuda and not args.full)
    project_sft = importlib.util.find_spec("empathy_workbook.phases.sft") is not None
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else set()
    runs = [r for r in plan(cuda, small) if (only is None or r[0] in only) and r[0] not in skip]
    device = "cuda" if cuda else "cpu"
    info["matmul_peak_gflops"] = {d: round(common.matmul_peak_gflops(d, device), 1)
                                  for d in (["bf16", "fp16"] if cuda else ["fp32", "bf16"])}
    common.log(f"device: {info['device_name']} ({common.device_slug(info)}); mode: {'cpu-small' if small else 'full'}; "
               f"matmul peak {info['matmul_peak_gflops']} GFLOP/s; {len(runs)} benchmark processes")
    started = time.perf_counter()
    rows, log_entries = [], []
    today = dt.date.today().isoformat()
    for stage, label, argv in runs:
        if stage == "export" and args.reuse_export and list(common.RESULTS_DIR.glob(f"*{today}-export.json")):
            rows += export_rows()
            log_entries.append({"stage": stage, "label": label, "ok": True, "reused": True})
            common.log("\n=== export: reusing today's result file ===")
            continue
        got, entry = run_one(stage, label, argv, small, args.timeout or (600 if small else 1800))
        rows += got
        log_entries.append(entry)
    proj = projection(rows)
    result = {"date": dt.date.today().isoformat(), "device": info, "mode": "cpu-small" if small else "full",
              "sft_code_path": "project (empathy_workbook.phases.sft)" if project_sft else "TRL SFTTrainer directly",
              "data_dir": os.environ.get("BENCH_DATA_DIR") or "data/",
              "suite_seconds": round(time.perf_counter() - started, 1), "runs": log_entries, "rows": rows,
              "workload": WORKLOAD, "workload_facts": workload_facts(), "projection": proj}
    out = args.out or common.results_path(info)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    measured = [r for r in rows if r["stage"] not in ("export", "padding")]
    print(f"\n## Benchmarks on {info['device_name']} ({result['mode']}, {result['suite_seconds']:.0f} s)\n")
    print(common.markdown_table(measured))
    padding = [r for r in rows if r["stage"] == "padding"]
    if padding:
        from bench_padding import share_table

        print("\n" + share_table([_Row(r) for r in padding]))
    export = [r for r in rows if r["stage"] == "export"]
    if export:
        print("\n" + export_table(export))
    if proj:
        print("\n" + projection_table(proj, device))
    print("\nWork of the full-data run (hardware-independent, qwen3-0.6b preset):\n```\n"
          + json.dumps(result["workload_facts"], indent=1) + "\n```")
    failed = [e for e in log_entries if not e["ok"]]
    if failed:
        print(f"\n{len(failed)} benchmark(s) failed: " + ", ".join(f"{e['stage']} ({e['label']})" for e in failed))
    print(f"\nwritten to {out}")


class _Row:
    """Attribute access over a result dict (for share_table)."""

    def __init__(self, d):
        self.__dict__.update(d)


if __name__ == "__main__":
    main()
