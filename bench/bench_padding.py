"""Benchmark (not a test): how much of each batch is padding, per batching strategy, on the shipped corpus.

No model is run: this replays the batch composition of one epoch exactly (same samplers as the
trainers) on the corpus tokenized as the phases tokenize it, with Qwen3's vocabulary:
* SFT (phase 01): random order (the Trainer default), transformers' length-grouped sampler,
  TRL padding-free (one flattened row per batch) and TRL BFD packing;
* DPO (phase 03): chosen and rejected rows of a batch are padded to the longest of all of them;
* sampling (phase 02, models.generate): prompt padding with prompts sorted by length (what
  models.generate does) versus the order they come in.
Padding share = padded slots that hold no token / all slots. Compute on padding is wasted work
(attention and every projection run over it), so real-token throughput scales with 1 - share.

    .venv/bin/python bench/bench_padding.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from empathy_workbook.phases.sft import padded_share  # noqa: E402  (the same measure notebook 01 prints)


def sft_orders(lengths: list[int], batch: int, seed: int = 0) -> dict[str, list[int]]:
    """Index orders of one epoch: the Trainer's random sampler and its length-grouped sampler."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    grouped = get_length_grouped_indices(lengths, batch, generator=torch.Generator().manual_seed(seed))
    return {"random": shuffled, "group_by_length": grouped}


def packed_share(lengths: list[int], max_length: int) -> tuple[float, int]:
    """(unused share of the blocks, number of blocks) of TRL's best-fit-decreasing packing into max_length blocks."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    data = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    packed = pack_dataset(data, max_length, strategy="bfd")
    used = sum(len(x) for x in packed["input_ids"])
    return 1 - used / (len(packed) * max_length), len(packed)


def main(argv=None) -> None:
    import common
    from common import Row, cli, emit, qwen_tokenizer
    from empathy_workbook.chat import render_prompt, tokenize_prompt_completion

    parser = cli(__doc__.splitlines()[0], shape=None)
    parser.add_argument("--preset", default="tiny",
                        help="whose data and max_length (qwen3-0.6b: the Amod data set, where it is reachable)")
    args = parser.parse_args(argv)
    tokenizer, tokenizer_name = qwen_tokenizer(log=common.log)
    train, _, cfg = common.corpus_records(tokenizer, args.preset)
    max_length = cfg.sft.train.max_length
    sft_lengths = [len(tokenize_prompt_completion(tokenizer, r["prompt"], r["completion"][0]["content"],
                                                  max_length)["input_ids"]) for r in train]
    prompt_lengths = [len(tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"])
                      for r in train]
    answer_lengths = [n - p for n, p in zip(sft_lengths, prompt_lengths)]
    rows = []
    base = dict(shape="corpus", layers=0, dtype="-", device="-", tokens_per_s=None, unit="")

    def add(stage, what, batch, share, **extra):
        rows.append(Row(stage="padding", what=f"{stage}: {what}", batch=batch, seq_len=round(
            sum(sft_lengths) / len(sft_lengths)), extra={"padding_share": share, **extra}, **base))

    for batch in (4, 8, 16):
        for name, order in sft_orders(sft_lengths, batch).items():
            add("SFT", name, batch, padded_share(sft_lengths, order, batch))
        add("SFT", "padding_free (flattened)", batch, 0.0)
    unused, blocks = packed_share(sft_lengths, max_length)
    # TRL runs BFD packing padding-free, so no compute goes to padding; the unused block room only says
    # how well rows combine (rows longer than half a block never share one)
    add("SFT", f"packing bfd into {max_length}-token blocks ({len(sft_lengths)} rows → {blocks} blocks, "
               f"{1 - unused:.0%} full)", 1, 0.0, blocks=blocks, rows=len(sft_lengths), unused_block_room=unused)
    # DPO: 2B rows (prompt+chosen, prompt+rejected) padded together; rejected = another row's answer
    rng = random.Random(0)
    dpo_rows = []
    for i in range(len(train)):
        dpo_rows.append((prompt_lengths[i] + answer_lengths[i], prompt_lengths[i] + rng.choice(answer_lengths)))
    for batch in (2, 4, 8):
        order = list(range(len(dpo_rows)))
        random.Random(1).shuffle(order)
        real = slots = 0
        for start in range(0, len(order), batch):
            chunk = [n for i in order[start:start + batch] for n in dpo_rows[i]]
            real += sum(chunk)
            slots += len(chunk) * max(chunk)
        add("DPO", "random order, chosen+rejected padded together", batch, 1 - real / slots)
    # sampling: prompt padding, sorted (models.generate) vs arrival order
    arrival = list(range(len(prompt_lengths)))
    random.Random(2).shuffle(arrival)
    by_length = sorted(arrival, key=lambda i: prompt_lengths[i])
    for batch in (8, 16, 32):
        add("sampling", "prompts in arrival order", batch, padded_share(prompt_lengths, arrival, batch))
        add("sampling", "prompts sorted by length (models.generate)", batch,
            padded_share(prompt_lengths, by_length, batch))
    meta = {"tokenizer": tokenizer_name, "rows": len(train), "max_length": max_length,
            "sft_length": {"min": min(sft_lengths), "median": sorted(sft_lengths)[len(sft_lengths) // 2],
                           "max": max(sft_lengths)},
            "prompt_length": {"min": min(prompt_lengths), "max": max(prompt_lengths)}}
    common.log(f"padding: {meta}")
    emit(rows, args.json_out, meta=meta)
    print(share_table(rows))


def share_table(rows) -> str:
    lines = ["| phase: strategy | batch | padding share |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.batch} | {r.extra['padding_share']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
