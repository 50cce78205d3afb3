"""The GPU check's runs (started by bench/gpu_check.sh, which installs what is missing first).

For each backend, the qwen3-0.6b-rehearsal preset with Qwen3-0.6B's full 28 layers (random weights, Qwen3's real
tokenizer: the real shapes, so the speed and memory are the real run's) goes through all six notebooks with the
runner, and the table reports per notebook: wall time, tokens and tokens/s of its main model work, peak GPU memory.

    unsloth       Unsloth's FastLanguageModel, 4-bit base (the preset's QLoRA), Unsloth's DPO path
    transformers  transformers + PEFT, 16-bit (bf16) base, no Unsloth

Results: bench/results/<device>-<date>-gpu-check.json and a markdown table on stdout. Not a test: nothing
is asserted except that every notebook finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

MODEL = "random:qwen3-0.6b?layers=28"  # all of Qwen3-0.6B's layers (the rehearsal preset cuts them to 2)
BACKENDS = {
    "unsloth": {"model": {"name_or_path": MODEL, "use_unsloth": True, "load_in_4bit": True}},
    "transformers": {"model": {"name_or_path": MODEL, "use_unsloth": False, "load_in_4bit": False}},
}
# Where each notebook's tokens and the seconds of its main work are read (metrics.json keys or files it wrote).
NOTEBOOK_WORK = {
    "sft": "training tokens (non-padding) / train_seconds",
    "preferences": "sampled rejected-answer tokens / sampling_seconds",
    "dpo": "training tokens (non-padding) / train_seconds",
    "eval": "generated answer tokens of every model / notebook wall time",
}


def preset_file(backend: str, folder: Path) -> Path:
    """A preset that extends the rehearsal with this backend's model settings (YAML is a superset of JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gpu-check-{backend}.yaml"
    path.write_text(json.dumps({"extends": "qwen3-0.6b-rehearsal", **BACKENDS[backend]}, indent=1) + "\n")
    return path


def jsonl_sum(path: Path, key: str) -> int:
    if not path.exists():
        return 0
    return sum(int(json.loads(line).get(key) or 0) for line in path.read_text().splitlines() if line.strip())


def notebook_rows(run_dir: Path, summary: dict) -> list[dict]:
    """One row per notebook: wall time, work tokens, tokens/s, peak GPU memory, backend."""
    rows = []
    for phase, entry in summary["phases"].items():
        metrics_path = run_dir / phase / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        tokens, seconds = None, None
        if phase in ("sft", "dpo"):
            tokens, seconds = metrics.get("tokens"), metrics.get("train_seconds")
        elif phase == "preferences":
            tokens, seconds = jsonl_sum(run_dir / phase / "candidates.jsonl", "new_tokens"), metrics.get("sampling_seconds")
        elif phase == "eval":
            tokens, seconds = jsonl_sum(run_dir / phase / "answers.jsonl", "new_tokens"), entry.get("seconds")
        rows.append({
            "notebook": entry.get("notebook", phase), "status": entry.get("status"),
            "wall_s": round(entry.get("seconds") or 0.0, 1), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if tokens and seconds else None,
            "peak_gpu_mb": metrics.get("peak_memory_mb"), "backend": metrics.get("backend"),
            "processes": metrics.get("processes", 1),
        })
    return rows


def run_backend(backend: str, processes: int, presets: Path) -> dict:
    """All six notebooks of one backend, forced (nothing reused); returns the summary and the table rows."""
    run = f"gpu-check-{backend}"
    command = [sys.executable, "-m", "empathy_workbook", "run", "--preset", str(preset_file(backend, presets)),
               "--run", run, "--force", "--num-processes", str(processes)]
    print("gpu_check:", " ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT)
    from empathy_workbook.paths import RunPaths

    paths = RunPaths.for_run(run)
    summary = json.loads(paths.summary_json.read_text()) if paths.summary_json.exists() else {"phases": {}}
    return {"backend": backend, "ok": done.returncode == 0, "seconds": round(time.perf_counter() - started, 1),
            "run_dir": str(paths.root), "notebooks": notebook_rows(paths.root, summary)}


def table(results: list[dict]) -> str:
    lines = ["| backend | notebook | wall s | tokens | tokens/s | peak GPU MB | processes |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for row in result["notebooks"]:
            lines.append(f"| {result['backend']} | {row['notebook']} | {row['wall_s']} | {row['tokens'] or '—'} | "
                         f"{row['tokens_per_s'] or '—'} | {row['peak_gpu_mb'] or '—'} | {row['processes']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, default=1, help="processes for notebooks 01 and 03")
    parser.add_argument("--only", choices=list(BACKENDS), help="run one backend")
    args = parser.parse_args(argv)
    if not common.cuda_available():
        print("gpu_check: CUDA is not available to torch: run bench/gpu_check.sh on a machine with an NVIDIA GPU",
              file=sys.stderr)
        return 2
    presets = ROOT / "artifacts" / "bench" / "gpu-check"
    results = [run_backend(name, args.num_processes, presets) for name in BACKENDS if args.only in (None, name)]
    info = common.device_info()
    record = {"date": dt.date.today().isoformat(), "device": info, "model": MODEL,
              "preset": "qwen3-0.6b-rehearsal", "work": NOTEBOOK_WORK, "results": results}
    out = common.results_path(info, "-gpu-check")
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(results))
    print(f"gpu_check: results in {out}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
