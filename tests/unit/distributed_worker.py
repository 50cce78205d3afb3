"""One phase's training entry point in this process (or, under `accelerate launch`, in each process), with a ledger
of the training rows every process trained on. Started by tests/unit/test_distributed.py, never collected as a test.

    python tests/unit/distributed_worker.py sft|dpo RUN ARTIFACTS LEDGER_DIR OVERRIDES_JSON
    python tests/unit/distributed_worker.py sample MODEL_DIR RECORDS_JSONL OUT_DIR GGUF   # generation, rejected answers,
                                                                                  # judge, llama.cpp answers
"""

import json
import math
import os
import sys
from pathlib import Path


def install_ledger(folder: Path) -> None:
    """Wrap the trainers' training_step: append (epoch, rows of this micro-batch) to LEDGER_DIR/rank<R>.jsonl.

    A row is named by its tokens (SFT: the non-pad input ids; DPO: the prompt + chosen sequence, the first half of
    TRL's batch), so the test can match what was trained against the rows on disk.
    """
    from empathy_workbook.phases import training

    original = training.TrainingGuards.training_step
    path = folder / f"rank{os.environ.get('RANK', '0')}.jsonl"

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
        if "DPO" in type(self).__name__:
            ids, mask = ids[: len(ids) // 2], mask[: len(mask) // 2]
        rows = [[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)]
        with path.open("a") as handle:
            handle.write(json.dumps({"epoch": math.floor(self.state.epoch + 1e-6), "rows": rows}) + "\n")
        return original(self, model, inputs, num_items_in_batch)

    training.TrainingGuards.training_step = training_step


def sample(model_dir: str, records_path: str, out_dir: str, gguf: str) -> None:
    """Answers (models.generate), rejected answers (rejected.generate_candidates), rubric scores (Judge.score) and the
    evaluation's llama.cpp answers (evaluate.answer_with_gguf) of the same records; the main process writes them to
    OUT_DIR/sampled-<processes>.json."""
    from dataclasses import replace

    from empathy_workbook import judges
    from empathy_workbook.models import loading as models
    from empathy_workbook.phases import rejected
    from empathy_workbook.config import load_config
    from empathy_workbook.distributed import gather_values, is_main_process, world_size
    from empathy_workbook.io import read_jsonl

    cfg = load_config("tiny").preferences
    cfg = replace(cfg, sampling=replace(cfg.sampling, max_new_tokens=12, batch_size=2), truncate_rate=0.3,
                  low_repetition_penalty_rate=0.3)
    records = read_jsonl(Path(records_path))
    tokenizer = models.load_tokenizer(model_dir)
    model = models.load_causal_lm(model_dir)
    calls = []
    original_generate = model.generate
    model.generate = lambda **kwargs: calls.append(1) or original_generate(**kwargs)  # counts this process's batches
    answers = models.generate(model, tokenizer, [r["prompt"] for r in records], cfg.sampling, progress=False)
    candidates_path = Path(out_dir) / f"candidates-{world_size()}.jsonl"
    candidates = rejected.generate_candidates(model, tokenizer, records, cfg, candidates_path, "train", "key",
                                              progress=False, log=lambda *_: None)
    judge = judges.get_judge(cfg.second_judge, use_cache=False)
    scores = judge.score([r["prompt"][-1]["content"] for r in records], [c["rejected"] for c in candidates],
                         progress=False)
    from empathy_workbook.phases.evaluate import EvalPrompt, answer_with_gguf

    prompts = [EvalPrompt(r["id"], "validation", "validation", r["prompt"]) for r in records]
    gguf_answers = answer_with_gguf(Path(gguf), tokenizer, prompts, cfg.sampling, n_threads=1)
    batches = gather_values(len(calls))
    if is_main_process():
        Path(out_dir, f"sampled-{world_size()}.json").write_text(json.dumps({
            "generate_calls_per_process": batches,
            "answers": answers, "candidates": candidates, "file": [json.loads(line) for line in
                                                                   candidates_path.read_text().splitlines()],
            "scores": [s.overall for s in scores], "gguf_answers": gguf_answers}))


def main(phase: str, run: str, artifacts: str, ledger: str, overrides: str) -> None:
    folder = Path(ledger)
    folder.mkdir(parents=True, exist_ok=True)
    install_ledger(folder)
    from importlib import import_module

    import_module(f"empathy_workbook.phases.{phase}").train_phase("tiny", run, json.loads(overrides), Path(artifacts))


if __name__ == "__main__":
    try:
        if sys.argv[1] == "sample":
            sample(*sys.argv[2:6])
        else:
            main(*sys.argv[1:6])
    finally:
        from empathy_workbook.distributed import leave

        leave()
