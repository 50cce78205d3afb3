"""Benchmark (not a test): three ways to batch the sampling of answers, interleaved in one process.

Options, all with the same prompts, seed and sampling settings (the preference phase's T 1.5, top-p 1,
top-k off), on the same peak KV-cache size, B tokens = batch_size x (longest prompt + max_new_tokens):

* fixed       today's `models.generate`: prompts sorted by length, cut into batches of batch_size rows;
              a batch runs until its longest answer ends (finished rows keep decoding padding).
* budget      `models.generate(..., token_budget=B)`: the same sorted prompts cut by tokens instead of rows
              (rows x (longest prompt + max_new_tokens) <= B), so short prompts share bigger batches.
* continuous  transformers' `model.generate_batch` (continuous batching, paged KV cache of B tokens):
              a finished row's slot is refilled by the next prompt at once; no padding; shared prompt
              prefixes (the system prompt) can be cached once.

The options run in turn (fixed, budget, continuous, fixed, ...), so a busy shared machine slows each
alike; compare the ratios within a repeat. Odd repeats feed the prompts in reversed order: whether an
option gives the same answers across repeats is the seeded guarantee (same prompts + seed -> same
answers in any input order). A forward hook counts the token slots the model computed; `slots per needed
token` divides them by what the answers needed (each prompt once, each sampled token but the last once):
above 1 is padding and finished rows still decoding, below 1 is prefix reuse.

Models: the embedded tiny model (it has learned to stop, so answers end at different lengths) and the
Qwen3-shaped rehearsal model `random:qwen3-0.6b?layers=2` (random weights: every row runs to the cap).

    .venv/bin/python bench/bench_generation_options.py --json-out bench/results/<name>.json
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> (model spec, preset whose data and batch size are used, default prompts, default max_new_tokens)
MODELS = {
    "tiny": ("tiny", "tiny", 24, 80),
    "rehearsal": ("random:qwen3-0.6b?layers=2", "qwen3-0.6b-rehearsal", 16, 24),  # 24: the preset's own cap
}
OPTIONS = ("fixed", "budget", "continuous")


def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0], shape=None)
    parser.add_argument("--models", default="tiny,rehearsal", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from {list(OPTIONS)}")
    parser.add_argument("--prompts", type=int, help="prompts per call (default per model: tiny 24, rehearsal 16)")
    parser.add_argument("--new-tokens", type=int, help="max_new_tokens (default per model: tiny 80, rehearsal 24)")
    parser.add_argument("--batch", type=int, help="rows of a fixed batch (default: the preset's sampling batch_size)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all options per model")
    parser.add_argument("--note", help="what the machine was doing, stored in the JSON's meta")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core); fewer "
                        "than the cores when another job shares the machine")
    parser.add_argument("--page-size", type=int, default=32, help="continuous batching: tokens per KV-cache page")
    parser.add_argument("--max-batch-tokens", type=int, default=512,
                        help="continuous batching: tokens one forward pass may hold (prompt chunks + decode rows)")
    return parser.parse_args(argv)


def mixed_length_prompts(records: list[dict], tokenizer, n: int) -> list[list[dict]]:
    """n prompts spread evenly over the corpus's prompt lengths (shortest to longest), then shuffled."""
    from empathy_workbook.chat import encode_messages

    by_length = sorted(records, key=lambda r: len(encode_messages(tokenizer, r["prompt"])))
    picks = [by_length[round(k * (len(by_length) - 1) / max(n - 1, 1))]["prompt"] for k in range(n)]
    random.Random(0).shuffle(picks)  # arrival order
    return picks


class SlotCounter:
    """Forward pre-hook: the number of forward passes and the token slots (input_ids elements) they computed."""

    def __init__(self, model):
        self.passes = self.slots = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.passes += 1
        self.slots += int(ids.numel()) if ids is not None else 0

    def reset(self) -> None:
        self.passes = self.slots = 0


def continuous_generate(model, tokenizer, conversations, sampling, kv_tokens: int, page_size: int,
                        max_batch_tokens: int) -> list[dict]:
    """models.generate's results (text, ended_on_eos, new_tokens) from transformers' generate_batch.

    Prompts are submitted sorted by (length, ids), so the scheduler's first-in-first-out order does not
    depend on the input order; the cache holds kv_tokens tokens (pages of page_size).
    """
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from empathy_workbook.chat import encode_messages
    from empathy_workbook.models.loading import sampling_kwargs, stop_token_ids

    prompts = [encode_messages(tokenizer, messages) for messages in conversations]
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))
    stops = stop_token_ids(tokenizer)
    generation = GenerationConfig(**sampling_kwargs(sampling), eos_token_id=stops,
                                  pad_token_id=tokenizer.pad_token_id)
    cb = ContinuousBatchingConfig(page_size=page_size, num_blocks=math.ceil(kv_tokens / page_size),
                                  max_batch_tokens=max_batch_tokens, seed=sampling.seed)
    outputs = list(model.generate_batch([prompts[i] for i in order], generation_config=generation,
                                        continuous_batching_config=cb, warmup=False).values())
    failed = [o.error for o in outputs if o.error is not None]
    if len(outputs) != len(prompts) or failed:
        raise RuntimeError(f"generate_batch returned {len(outputs)} of {len(prompts)} answers; errors: {failed[:3]}")
    results: list[dict | None] = [None] * len(prompts)
    for index, output in zip(order, outputs):
        ids = list(output.generated_tokens)
        ended = any(t in stops for t in ids)
        if ended:
            ids = ids[: min(ids.index(t) for t in stops if t in ids)]
        results[index] = {"text": tokenizer.decode(ids, skip_special_tokens=True).strip(), "ended_on_eos": ended,
                          "new_tokens": len(ids)}
    return results  # type: ignore[return-value]


def run_option(option: str, model, tokenizer, conversations, sampling, kv_tokens: int, args) -> list[dict]:
    """One call of an option on all the conversations; results in the input order."""
    from empathy_workbook.models import loading as models

    if option == "fixed":
        return models.generate(model, tokenizer, conversations, sampling, progress=False)
    if option == "budget":
        return models.generate(model, tokenizer, conversations, sampling, progress=False, token_budget=kv_tokens)
    return continuous_generate(model, tokenizer, conversations, sampling, kv_tokens, args.page_size,
                               args.max_batch_tokens)


def static_waste(prompt_lengths: list[int], outputs: list[dict], batches: list[list[int]]) -> dict:
    """Prompt padding and finished-row decode slots of static (left-padded, run-to-longest) batches."""
    real_prompt = sum(prompt_lengths)
    padded_prompt = sum(len(b) * max(prompt_lengths[i] for i in b) for b in batches)
    useful = slots = 0
    for batch in batches:
        steps = [outputs[i]["new_tokens"] + int(outputs[i]["ended_on_eos"]) for i in batch]  # the end token is a step
        useful += sum(steps)
        slots += len(batch) * max(steps)
    return {"prompt_padding_share": 1 - real_prompt / padded_prompt, "finished_row_slot_share": 1 - useful / slots,
            "rows_per_batch": [len(b) for b in batches]}


def option_row(option: str, rounds: list[dict], answers: list[list[str]], error: str | None, what: dict,
               settings: dict):
    """The result row of one option on one model: median tokens/s, its ratio to `fixed` in each repeat, the waste."""
    from common import Row

    mine = [r for r in rounds if r["option"] == option]
    if not mine:
        return Row(stage="generation-options", what=option, tokens_per_s=None, unit="new tok/s", **what,
                   extra={"error": error, **settings})
    fixed = {r["repeat"]: r["tokens_per_s"] for r in rounds if r["option"] == "fixed"}
    extra = {key: mine[0][key] for key in ("prompt_padding_share", "finished_row_slot_share", "rows_per_batch")
             if key in mine[0]}
    extra.update({
        "wall_s": statistics.median(r["wall_s"] for r in mine), "wall_s_each": [r["wall_s"] for r in mine],
        "tokens_per_s_each": [r["tokens_per_s"] for r in mine],
        "ratio_to_fixed_each": [r["tokens_per_s"] / fixed[r["repeat"]] for r in mine if r["repeat"] in fixed],
        "new_tokens_each": [r["new_tokens"] for r in mine], "forward_passes": mine[0]["forward_passes"],
        "slots_per_needed_token": mine[0]["slots_per_needed_token"], "ended_on_eos": mine[0]["ended_on_eos"],
        "same_answers_every_repeat": all(a == answers[0] for a in answers), "error": error, **settings,
    })
    return Row(stage="generation-options", what=option, tokens_per_s=statistics.median(r["tokens_per_s"] for r in mine),
               unit="new tok/s", **what, extra=extra)


def main(argv=None) -> None:
    args = parse_args(argv)
    import common
    from common import emit, log
    from empathy_workbook.chat import encode_messages
    from empathy_workbook.config import SamplingConfig
    from empathy_workbook.models import loading as models

    device = "cuda" if common.cuda_available() else "cpu"
    dtype = "fp32" if device == "cpu" else "bf16"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    common.mark_imports_done()
    started, load_before = time.perf_counter(), os.getloadavg()
    options = args.options.split(",")
    rows, rounds, errors = [], [], {}
    for name in args.models.split(","):
        spec, preset, default_prompts, default_new = MODELS[name]
        path = models.resolve_model_path(spec, log=log)
        tokenizer = models.load_tokenizer(path)
        model = models.load_causal_lm(path, device=device, precision=dtype)
        counter = SlotCounter(model)
        train, _, cfg = common.corpus_records(tokenizer, preset)
        conversations = mixed_length_prompts(train, tokenizer, args.prompts or default_prompts)
        lengths = [len(encode_messages(tokenizer, c)) for c in conversations]
        new_tokens = args.new_tokens or default_new
        batch_size = args.batch or cfg.preferences.sampling.batch_size
        sampling = SamplingConfig(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                                  batch_size=batch_size, seed=cfg.preferences.sampling.seed)
        kv_tokens = batch_size * (max(lengths) + new_tokens)
        prompt_ids = [encode_messages(tokenizer, c) for c in conversations]

        def run(option: str, convs: list, sample: SamplingConfig) -> list[dict]:
            return run_option(option, model, tokenizer, convs, sample, kv_tokens, args)

        log(f"{name}: {len(conversations)} prompts of {min(lengths)}-{max(lengths)} tokens, {new_tokens} new tokens, "
            f"batch {batch_size}, KV budget {kv_tokens} tokens")
        for option in options:  # untimed warm-up of each path (first-call allocations, CB's thread and cache)
            try:
                run(option, conversations[:4], SamplingConfig(**{**sampling.__dict__, "max_new_tokens": 4}))
            except Exception as err:  # noqa: BLE001 - recorded, the other options still run
                errors[(name, option)] = f"{type(err).__name__}: {err}"
                log(f"{name} {option}: warm-up failed: {errors[(name, option)]}")
        answers: dict[str, list[list[str]]] = {o: [] for o in options}
        for repeat in range(args.repeats):
            order = list(range(len(conversations)))[:: -1 if repeat % 2 else 1]
            for option in options:
                if (name, option) in errors:
                    continue
                counter.reset()
                with common.timed(device) as t:
                    try:
                        out = run(option, [conversations[i] for i in order], sampling)
                    except Exception as err:  # noqa: BLE001
                        errors[(name, option)] = f"{type(err).__name__}: {err}"
                        log(f"{name} {option}: failed: {errors[(name, option)]}")
                        continue
                out = [out[order.index(i)] for i in range(len(conversations))]  # back to arrival order
                answers[option].append([o["text"] for o in out])
                generated = sum(o["new_tokens"] for o in out)
                needed = sum(lengths) + sum(o["new_tokens"] + o["ended_on_eos"] - 1 for o in out)
                record = {"model": name, "option": option, "repeat": repeat, "reversed_input": bool(repeat % 2),
                          "wall_s": t["s"], "new_tokens": generated, "tokens_per_s": generated / t["s"],
                          "forward_passes": counter.passes, "slots_per_needed_token": counter.slots / needed,
                          "ended_on_eos": sum(o["ended_on_eos"] for o in out), "load_average": os.getloadavg()}
                if option != "continuous":
                    budget = kv_tokens if option == "budget" else None
                    batches = models.length_sorted_batches(prompt_ids, batch_size, new_tokens, budget)
                    record.update(static_waste(lengths, out, batches))
                rounds.append(record)
                log(f"{name} r{repeat} {option}: {t['s']:.1f} s, {generated} tokens, {generated / t['s']:.1f} tok/s, "
                    f"{counter.passes} passes, slots/needed {record['slots_per_needed_token']:.2f}")
        what = dict(shape=spec, layers=model.config.num_hidden_layers, dtype=dtype, device=device, batch=batch_size,
                    seq_len=round(sum(lengths) / len(lengths)))
        settings = dict(prompts=len(conversations), prompt_lengths=[min(lengths), max(lengths)],
                        max_new_tokens=new_tokens, kv_budget_tokens=kv_tokens, temperature=1.5, top_p=1.0, top_k=0,
                        seed=sampling.seed)
        for option in options:
            rows.append(option_row(option, [r for r in rounds if r["model"] == name], answers.get(option, []),
                                   errors.get((name, option)), what, settings))
            if option == "continuous":
                rows[-1].extra.update({"page_size": args.page_size, "num_blocks": math.ceil(kv_tokens / args.page_size),
                                       "max_batch_tokens": args.max_batch_tokens})
        model = None  # the next model loads after this one is freed
        models.free_memory()
    meta = {"command": " ".join(["bench/bench_generation_options.py", *(argv if argv is not None else sys.argv[1:])]),
            "device": common.device_info(), "load_average_before": load_before,
            "seconds": time.perf_counter() - started,
            "note": args.note, "rounds": rounds, "errors": {f"{m} {o}": e for (m, o), e in errors.items()}}
    emit(rows, args.json_out, meta)
    for r in rows:
        e = r.extra
        if r.tokens_per_s is None:
            print(f"- {r.shape} {r.what}: failed: {e.get('error')}")
            continue
        ratios = ", ".join(f"{x:.2f}" for x in e["ratio_to_fixed_each"])
        print(f"- {r.shape} {r.what}: {r.tokens_per_s:.1f} tok/s (median), ratio to fixed per repeat [{ratios}], "
              f"{e['forward_passes']} passes, slots per needed token {e['slots_per_needed_token']:.2f}, "
              f"same answers every repeat: {e['same_answers_every_repeat']}")


if __name__ == "__main__":
    main()
