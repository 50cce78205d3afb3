"""Benchmark (not a test): batched sampling of rejected answers with the project's models.generate,
on a random-weight Qwen3-0.6B (exact shape), at several batch sizes.

Prompts are the corpus's training prompts rendered with the chat template (system + question,
generation prompt, thinking off), tokenized with Qwen3's vocabulary. Sampling uses the preference
phase's settings (T 1.5, top-p 1, top-k off). A random model almost never samples an end token, so
every row runs to max_new_tokens: the worst case, which is also what a batch costs when one of its
answers is long. Forward hooks time the prompt pass (prefill) and the decode steps separately.

    .venv/bin/python bench/bench_generate.py --cpu-small
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    from common import cli

    parser = cli(__doc__.splitlines()[0])
    parser.add_argument("--dtype", help="default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--new-tokens", type=int, help="max_new_tokens (default 16 CPU, 320 CUDA = the preset)")
    parser.add_argument("--temperature", type=float, default=1.5)
    return parser.parse_args(argv)


class ForwardClock:
    """Forward hooks on the model: the first forward of a generate call is the prefill, the rest are decode steps."""

    def __init__(self, model, device: str):
        import common

        self.device, self.calls = device, []
        self._sync = common.sync
        self._begin = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, module, inputs):
        self._sync(self.device)
        self._begin = time.perf_counter()

    def _post(self, module, inputs, output):
        self._sync(self.device)
        self.calls.append(time.perf_counter() - self._begin)

    def split(self) -> tuple[float, float, int]:
        """(prefill seconds, decode seconds, decode steps) of the calls recorded since the last reset."""
        return (self.calls[0], sum(self.calls[1:]), len(self.calls) - 1) if self.calls else (0.0, 0.0, 0)


def prompts_for(tokenizer, n: int) -> list[list[dict]]:
    """n prompt conversations from the corpus (repeated if the corpus is smaller)."""
    from common import corpus_records

    train, _, _ = corpus_records(tokenizer)
    return [train[i % len(train)]["prompt"] for i in range(n)]


def main(argv=None) -> None:
    args = parse_args(argv)
    import common
    from common import Row, build_model, emit, log, peak_memory, qwen_tokenizer
    from empathy_workbook.chat import render_prompt
    from empathy_workbook.config import SamplingConfig
    from empathy_workbook.models import loading as models

    device = "cuda" if common.cuda_available() else "cpu"
    args.dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    args.new_tokens = args.new_tokens or (320 if device == "cuda" else 16)
    batches = [int(b) for b in (args.batches or "1,8,32").split(",")]
    common.mark_imports_done()
    common.reset_peak(device)
    tokenizer, tokenizer_name = qwen_tokenizer(log=log)
    model = build_model(args.shape, args.layers, args.dtype, device)
    model.eval()
    clock = ForwardClock(model, device)
    layers = args.layers or common.SHAPES[args.shape]["num_hidden_layers"]
    conversations = prompts_for(tokenizer, max(batches))
    rows = []
    # one untimed warm-up call (first-call allocations, kernel selection)
    models.generate(model, tokenizer, conversations[:1], SamplingConfig(max_new_tokens=2, batch_size=1),
                    progress=False)
    for batch in batches:
        chosen = conversations[:batch]
        prompt_lengths = [len(tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"])
                          for c in chosen]
        sampling = SamplingConfig(temperature=args.temperature, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens,
                                  batch_size=batch, seed=1234)
        common.reset_peak(device)
        clock.calls.clear()
        log(f"generate: batch {batch}, {args.new_tokens} new tokens …")
        with common.timed(device) as t:
            out = models.generate(model, tokenizer, chosen, sampling, progress=False)
        prefill, decode, steps = clock.split()
        new_tokens = sum(o["new_tokens"] for o in out)
        padded_prompt = batch * max(prompt_lengths)
        rows.append(Row(
            stage="generate", what=f"models.generate T={args.temperature}, {args.new_tokens} new tokens",
            shape=args.shape, layers=layers, dtype=args.dtype, device=device, batch=batch,
            seq_len=round(sum(prompt_lengths) / batch), tokens_per_s=new_tokens / t["s"],
            seconds_per_step=decode / steps if steps else None, unit="new tok/s", **peak_memory(device),
            extra={"wall_s": t["s"], "new_tokens": new_tokens, "prefill_s": prefill,
                   "prefill_tok_s": sum(prompt_lengths) / prefill if prefill else None,
                   "decode_s": decode, "decode_steps": steps,
                   "decode_tok_s": batch * steps / decode if decode else None,
                   "prompt_padding_share": 1 - sum(prompt_lengths) / padded_prompt,
                   "ended_on_eos": sum(o["ended_on_eos"] for o in out), "tokenizer": tokenizer_name,
                   "seconds_per_step_means": "seconds per decode step (one token for every row)",
                   **common.memory_notes(device)}))
    emit(rows, args.json_out)


if __name__ == "__main__":
    main()
