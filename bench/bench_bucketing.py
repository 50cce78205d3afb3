"""Benchmark (not a test): sampling with and without length bucketing, through models.generate.

models.generate sorts prompts by length before cutting batches. To measure what that buys, the same
prompts are also sampled in their arrival order by calling models.generate once per batch (a call
that holds exactly one batch cannot reorder across batches). Both use the preference phase's
sampling settings from the preset. Reported per variant: wall time, prompt padding share, and the
share of decode slots spent on rows that had already finished (a batch runs until its longest answer
ends; ordering by prompt length cannot fix that part).

Default model: the embedded tiny model, which has learned to end its answers, so finished-row waste
is real. `--model qwen3-0.6b` uses the random-weight Qwen3-0.6B shape instead (every row runs to the
cap, so only the prompt padding differs).

    .venv/bin/python bench/bench_bucketing.py
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0], shape=None)
    parser.add_argument("--model", choices=["tiny", "qwen3-0.6b"], default="tiny")
    parser.add_argument("--prompts", type=int, default=120, help="prompts sampled (tiny preset: 120)")
    parser.add_argument("--batch", type=int, help="default: the preset's preferences.sampling.batch_size")
    parser.add_argument("--new-tokens", type=int, help="default: the preset's preferences.sampling.max_new_tokens")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of both variants (best kept)")
    return parser.parse_args(argv)


def tiny_model_path() -> str:
    """The embedded tiny model, built from BENCH_DATA_DIR's corpus when that is set (development only)."""
    from empathy_workbook.models.loading import resolve_model_path

    if os.environ.get("BENCH_DATA_DIR"):
        from empathy_workbook.models.tiny import ensure_tiny

        return str(ensure_tiny(data_dir=Path(os.environ["BENCH_DATA_DIR"])))
    return resolve_model_path("tiny")


def slot_use(outputs: list[dict], batches: list[list[int]]) -> tuple[int, int]:
    """(useful decode slots, all decode slots): a batch runs as many steps as its longest row needs."""
    useful = slots = 0
    for batch in batches:
        steps = [outputs[i]["new_tokens"] + int(outputs[i]["ended_on_eos"]) for i in batch]  # the end token is a step
        useful += sum(steps)
        slots += len(batch) * max(steps)
    return useful, slots


def main(argv=None) -> None:
    args = parse_args(argv)
    import common
    from common import Row, emit, peak_memory
    from empathy_workbook.chat import render_prompt
    from empathy_workbook.models import loading as models

    device = "cuda" if common.cuda_available() else "cpu"
    common.mark_imports_done()
    if args.model == "tiny":
        path = tiny_model_path()
        tokenizer = models.load_tokenizer(path)
        model = models.load_causal_lm(path, device=device, precision="fp32")
        shape, layers, dtype = "tiny", model.config.num_hidden_layers, "fp32"
    else:
        tokenizer, _ = common.qwen_tokenizer(log=common.log)
        dtype = "bf16" if device == "cuda" else "fp32"
        model = common.build_model(args.model, None, dtype, device).eval()
        shape, layers = args.model, common.SHAPES[args.model]["num_hidden_layers"]
    train, _, cfg = common.corpus_records(tokenizer)
    sampling = cfg.preferences.sampling
    if args.batch:
        sampling.batch_size = args.batch
    if args.new_tokens:
        sampling.max_new_tokens = args.new_tokens
    prompts = [r["prompt"] for r in train][: args.prompts]
    random.Random(0).shuffle(prompts)  # "arrival order": no relation between neighbours' lengths
    lengths = [len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    size = sampling.batch_size
    sorted_order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    variants = {"bucketed (models.generate sorts by length)": [sorted_order[i:i + size]
                                                              for i in range(0, len(prompts), size)],
                "arrival order (one call per batch)": [list(range(i, min(i + size, len(prompts))))
                                                       for i in range(0, len(prompts), size)]}
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, batches in variants.items():
            common.log(f"bucketing: {name}, {len(prompts)} prompts, batch {size} …")
            with common.timed(device) as t:
                if name.startswith("bucketed"):
                    outputs = models.generate(model, tokenizer, prompts, sampling, progress=False)
                else:
                    outputs = []
                    for batch in batches:
                        outputs += models.generate(model, tokenizer, [prompts[i] for i in batch], sampling,
                                                   progress=False)
            if name not in best or t["s"] < best[name]["wall_s"]:
                best[name] = {"wall_s": t["s"], "outputs": outputs}
    rows = []
    for name, batches in variants.items():
        outputs = best[name]["outputs"]
        real_prompt = sum(lengths)
        padded_prompt = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        useful, slots = slot_use(outputs, batches)
        new = sum(o["new_tokens"] for o in outputs)
        rows.append(Row(stage="bucketing", what=name, shape=shape, layers=layers, dtype=dtype, device=device,
                        batch=size, seq_len=round(real_prompt / len(prompts)),
                        tokens_per_s=new / best[name]["wall_s"], unit="new tok/s", **peak_memory(device),
                        extra={"wall_s": best[name]["wall_s"], "prompt_padding_share": 1 - real_prompt / padded_prompt,
                               "finished_row_slot_share": 1 - useful / slots, "new_tokens": new,
                               "ended_on_eos": sum(o["ended_on_eos"] for o in outputs),
                               "prompts": len(prompts), "max_new_tokens": sampling.max_new_tokens,
                               "temperature": sampling.temperature}))
    emit(rows, args.json_out)
    for r in rows:
        print(f"- {r.what}: {r.extra['wall_s']:.2f} s, prompt padding {r.extra['prompt_padding_share']:.1%}, "
              f"finished-row decode slots {r.extra['finished_row_slot_share']:.1%}")


if __name__ == "__main__":
    main()
