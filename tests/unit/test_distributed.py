"""More than one process on the CPU (gloo): how rows and prompts are shared, and two-process SFT, DPO and sampling.

The slow tests start real processes with `accelerate launch --cpu --num_processes 2` (tests/unit/distributed_worker.py
runs a phase's entry point in each, with a ledger of the rows each process trained on) and compare them with the
same entry point in one process.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from empathy_workbook import distributed
from empathy_workbook.io import write_jsonl, write_metrics

WORKER = Path(__file__).with_name("distributed_worker.py")
# Measured on the tiny model, 2 CPU cores (tests below, 2026-12-06): the training loss of every update was the same
# float in one process and in two (SFT and DPO; same rows and micro-batches, and DDP's averaging of gradients that
# were scaled by the number of processes is exact in binary). 1e-4 leaves room for other BLAS summation orders
# while a change in the rows an update sees moves the loss by more than 1e-2 here. The validation loss is batched
# differently (each process scores a share) and moved by up to 8e-4 (relative): its bound is 5e-3.
LOSS_RTOL = 1e-4
EVAL_LOSS_RTOL = 5e-3


# --- how the effective batch and the rows are shared (no model) ---

@pytest.mark.parametrize("batch, accum, processes, expected", [
    (4, 4, 2, (4, 2)), (8, 2, 2, (8, 1)), (2, 1, 2, (1, 1)), (4, 4, 1, (4, 4)), (4, 2, 8, (1, 1))])
def test_each_process_gets_a_share_of_the_same_effective_batch(batch, accum, processes, expected):
    per_device, per_accum = distributed.per_process_schedule(batch, accum, processes)
    assert (per_device, per_accum) == expected
    assert per_device * per_accum * processes == batch * accum


def test_an_effective_batch_that_cannot_be_shared_is_refused():
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.per_process_schedule(4, 4, 3)


def dealt_rows(n_rows: int, batch: int, accum: int, processes: int, epoch: int = 0) -> list[list[set]]:
    """Per optimizer step, per process: the rows once_per_epoch_sampler gives it."""
    lengths = [10 + (7 * i) % 50 for i in range(n_rows)]
    samplers = [distributed.once_per_epoch_sampler(lengths, batch * accum * processes, processes, accum, rank, seed=3)
                for rank in range(processes)]
    per_rank = []
    for sampler in samplers:
        sampler.set_epoch(epoch)
        micro = list(sampler)
        assert len(micro) == len(sampler)  # the trainer plans its steps from len()
        per_rank.append([set().union(*map(set, micro[i:i + accum])) for i in range(0, len(micro), accum)])
    assert len({len(steps) for steps in per_rank}) == 1  # same number of steps everywhere: DDP never waits forever
    return [list(step) for step in zip(*per_rank)]


@pytest.mark.parametrize("n_rows, batch, accum, processes", [
    (20, 4, 1, 2), (21, 2, 2, 2), (17, 4, 1, 2), (30, 3, 1, 3), (9, 1, 2, 4)])
def test_every_row_is_dealt_exactly_once_per_epoch(n_rows, batch, accum, processes):
    for epoch in (0, 1):
        steps = dealt_rows(n_rows, batch, accum, processes, epoch)
        seen = Counter(row for step in steps for share in step for row in share)
        assert seen == Counter(range(n_rows))  # none twice, none lost (a short last step joins the one before)
        assert all(share for step in steps for share in step)  # no process idles through a step


def test_an_update_sees_the_same_rows_in_one_process_and_in_two():
    one = [set().union(*step) for step in dealt_rows(20, 8, 1, 1)]
    two = [set().union(*step) for step in dealt_rows(20, 4, 1, 2)]
    assert one == two and len(one) == 3
    assert [set().union(*s) for s in dealt_rows(20, 8, 1, 1, epoch=1)] != one  # and the order changes per epoch


def test_map_in_order_is_a_plain_call_in_one_process():
    assert distributed.world_size() == 1
    assert distributed.map_in_order(lambda items: [x * 2 for x in items], [3, 1, 2]) == [6, 2, 4]


def test_the_runner_passes_num_processes_to_the_training_notebooks_only():
    from empathy_workbook.pipeline import runner
    from empathy_workbook.paths import NOTEBOOKS_DIR
    from empathy_workbook.pipeline.runtime import NOTEBOOKS

    for phase, notebook in NOTEBOOKS.items():
        parameters = runner.runner_parameters(phase, "tiny", "x", num_processes=2)
        runner.check_parameters(NOTEBOOKS_DIR / notebook, parameters)  # declared where it is passed
        assert ("num_processes" in parameters) == (phase in ("sft", "dpo"))  # the registry's multi_process phases
        assert "num_processes" not in runner.runner_parameters(phase, "tiny", "x")  # one process: as before


# --- two real processes ---

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int, tmp: Path, cli: bool = False) -> None:
    """tests/unit/distributed_worker.py ARGS (or, with cli, `python -m empathy_workbook` ARGS) in one process, or in
    `processes` CPU processes through accelerate launch."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               EWB_ARTIFACTS=str(tmp / "artifacts"))
    target = ["-m", "empathy_workbook"] if cli else [str(WORKER)]
    if processes == 1:
        command = [sys.executable, *target, *args]
    else:
        # `--cpu` would start one process (accelerate 1.15 runs several CPU processes only through MPI); the
        # multi-GPU launcher is torchrun, and without CUDA the processes join one gloo group instead of NCCL.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *target, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp)
    if done.returncode:
        (tmp / "launch-failure.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, tiny_path, tokenizer, records):
    """Artifacts with the phases the training entry points read: 20 training and 6 validation rows (data), the tiny
    model as sft/merged (and in the cache), and 12 + 4 preference pairs whose rejected answer is the chosen one cut
    short."""
    from empathy_workbook.phases.rejected import truncate_text

    root = tmp_path_factory.mktemp("dist")
    run = root / "artifacts" / "runs" / "base"
    train, val = records
    write_jsonl(run / "data" / "train.jsonl", train[:20])
    write_jsonl(run / "data" / "val.jsonl", val[:6])
    write_metrics(run / "data", {"rows": 26}, "data-fixture")
    shutil.copytree(tiny_path, run / "sft" / "merged")
    # the tiny base model where these artifacts' cache expects it, so nothing rebuilds it (a notebook resolves 'tiny')
    shutil.copytree(tiny_path, root / "artifacts" / "cache" / "tiny" / Path(tiny_path).name)
    write_metrics(run / "sft", {}, "sft-fixture")

    def pairs(rows):
        return [{"prompt": r["prompt"], "chosen": r["completion"],
                 "rejected": [{"role": "assistant", "content": truncate_text(r["completion"][0]["content"], 0.4)}]}
                for r in rows]

    write_jsonl(run / "preferences" / "pairs.jsonl", pairs(train[20:32]))
    write_jsonl(run / "preferences" / "pairs_heldout.jsonl", pairs(val[6:10]))
    write_metrics(run / "preferences", {}, "preferences-fixture")
    return root


def train_twice(phase: str, overrides: dict, run_inputs: Path) -> dict:
    """The phase's entry point in one process (row_sampler 'rebalanced') and in two; their results and ledgers."""
    out = {}
    for processes in (1, 2):
        name = f"{phase}-{processes}"
        runs = run_inputs / "artifacts" / "runs"
        shutil.rmtree(runs / name, ignore_errors=True)
        shutil.copytree(runs / "base", runs / name)
        ledger = run_inputs / f"ledger-{name}"
        shutil.rmtree(ledger, ignore_errors=True)
        launch([phase, name, str(run_inputs / "artifacts"), str(ledger), json.dumps(overrides)], processes, run_inputs)
        folder = runs / name / phase
        out[processes] = {
            "result": json.loads((folder / "train_result.json").read_text()),
            "history": json.loads((folder / "log_history.json").read_text()),
            "ledger": [json.loads(line) for path in sorted(ledger.glob("rank*.jsonl"))
                       for line in path.read_text().splitlines()],
            "merged": (folder / "merged" / "model.safetensors").exists(),
            "adapter": (folder / "adapter" / "adapter_config.json").exists(),
        }
    return out


def rows_per_epoch(ledger: list[dict]) -> dict[int, Counter]:
    per_epoch: dict[int, Counter] = {}
    for entry in ledger:
        per_epoch.setdefault(entry["epoch"], Counter()).update(" ".join(map(str, row)) for row in entry["rows"])
    return per_epoch


def assert_same_curve(runs: dict) -> None:
    for key, bound in (("loss", LOSS_RTOL), ("eval_loss", EVAL_LOSS_RTOL)):
        one, two = ([row[key] for row in runs[n]["history"] if key in row] for n in (1, 2))
        assert len(one) == len(two) > 1
        worst = max(abs(a - b) / abs(a) for a, b in zip(one, two))
        print(f"largest relative difference of {key}, 1 vs 2 processes: {worst:.2e}")
        assert worst < bound, (key, one, two)


@pytest.mark.slow
def test_two_process_sft_sees_every_row_once_per_epoch_and_follows_the_one_process_curve(run_inputs, tokenizer):
    from empathy_workbook.phases import sft
    from empathy_workbook.io import read_jsonl

    overrides = {"sft": {"train": {"epochs": 2, "batch_size": 4, "grad_accum": 2, "eval_steps": 3, "save_steps": 3,
                                   "early_stopping_patience": 0, "warmup_ratio": 0.0, "row_sampler": "rebalanced"}}}
    runs = train_twice("sft", overrides, run_inputs)
    two = runs[2]
    assert two["result"]["processes"] == 2 and len(two["result"]["peak_memory_mb_per_process"]) == 2
    assert two["merged"] and two["adapter"] and two["result"]["global_step"] == runs[1]["result"]["global_step"] == 6
    rows = sft.tokenized_dataset(read_jsonl(run_inputs / "artifacts/runs/base/data/train.jsonl"), tokenizer, 256)
    expected = Counter(" ".join(map(str, ids)) for ids in rows["input_ids"])
    epochs = rows_per_epoch(two["ledger"])
    assert sorted(epochs) == [0, 1]
    for seen in epochs.values():
        assert seen == expected  # every training row exactly once per epoch, over both processes
    assert {entry["epoch"] for entry in runs[1]["ledger"]} == {0, 1}
    assert_same_curve(runs)


@pytest.mark.slow
def test_two_process_dpo_sees_every_pair_once_and_follows_the_one_process_curve(run_inputs):
    overrides = {"dpo": {"train": {"epochs": 1, "batch_size": 4, "grad_accum": 2, "eval_steps": 2, "save_steps": 2,
                                   "early_stopping_patience": 0, "warmup_ratio": 0.0, "row_sampler": "rebalanced"}}}
    runs = train_twice("dpo", overrides, run_inputs)
    two = runs[2]
    assert two["merged"] and two["adapter"] and two["result"]["train_pairs"] == 12
    epochs = rows_per_epoch(two["ledger"])
    assert list(epochs) == [0] and sum(epochs[0].values()) == 12 and set(epochs[0].values()) == {1}
    assert epochs == rows_per_epoch(runs[1]["ledger"])  # the same pairs as one process
    assert_same_curve(runs)


@pytest.mark.slow
def test_two_process_sampling_returns_every_prompt_once_in_order_with_one_process_answers(run_inputs, tiny_path,
                                                                                          records, tiny_gguf):
    folder = run_inputs / "sampling"
    folder.mkdir(exist_ok=True)
    chosen = records[0][:7]  # 7 prompts: the two processes get unequal shares
    write_jsonl(folder / "records.jsonl", chosen)
    for processes in (1, 2):
        launch(["sample", str(tiny_path), str(folder / "records.jsonl"), str(folder), str(tiny_gguf)], processes,
               run_inputs)
    one, two = (json.loads((folder / f"sampled-{n}.json").read_text()) for n in (1, 2))
    assert len(two["answers"]) == 7 and two["answers"] == one["answers"]  # same batches, same seeds, same order
    assert [c["id"] for c in two["candidates"]] == [r["id"] for r in chosen]
    assert two["candidates"] == one["candidates"]
    assert sorted(row["id"] for row in two["file"]) == sorted(r["id"] for r in chosen)  # written once, by one process
    assert two["scores"] == one["scores"]
    assert len(two["gguf_answers"]) == 7 and two["gguf_answers"] == one["gguf_answers"]  # prompt i keeps seed + i
    # the work was shared, not repeated: both processes generated, together as many batches as one process alone
    assert sum(two["generate_calls_per_process"]) == one["generate_calls_per_process"][0]
    assert min(two["generate_calls_per_process"]) > 0


@pytest.mark.slow
def test_the_sample_command_in_two_processes_writes_what_one_process_writes(run_inputs):
    runs = run_inputs / "artifacts" / "runs"
    files = {}
    for processes in (1, 2):
        name = f"sample-{processes}"
        shutil.rmtree(runs / name, ignore_errors=True)
        shutil.copytree(runs / "base", runs / name, ignore=shutil.ignore_patterns("preferences"))
        shutil.rmtree(run_inputs / "artifacts" / "cache" / "judge", ignore_errors=True)
        launch(["sample", "--run", name, "--set", "preferences.sampling.max_new_tokens=16"], processes, run_inputs,
               cli=True)
        rows = [json.loads(line) for line in (runs / name / "preferences" / "candidates.jsonl").read_text().splitlines()]
        cache = [json.loads(line) for path in (run_inputs / "artifacts" / "cache" / "judge").glob("*.jsonl")
                 for line in path.read_text().splitlines()]
        files[processes] = (sorted(rows, key=lambda r: (r["split"], r["id"])), sorted(c["key"] for c in cache))
    (one_rows, one_cache), (two_rows, two_cache) = files[1], files[2]
    assert len(two_rows) == 26 and len({(r["split"], r["id"]) for r in two_rows}) == 26  # 20 + 6 prompts, once each
    assert two_rows == one_rows  # chunks sampled with their own seeds: the same answers
    assert two_cache == one_cache and len(two_cache) == len(set(two_cache))  # every score written once


@pytest.mark.slow
def test_notebook_01_trains_in_two_processes_started_from_its_kernel(run_inputs, monkeypatch):
    """num_processes = 2: accelerate.notebook_launcher forks the papermill kernel; the processes train and save, the
    kernel reads their result and writes metrics.json as after a one-process run."""
    import papermill

    from empathy_workbook.paths import NOTEBOOKS_DIR
    from empathy_workbook.pipeline.runtime import NOTEBOOKS

    runs = run_inputs / "artifacts" / "runs"
    shutil.rmtree(runs / "nb-2", ignore_errors=True)
    shutil.copytree(runs / "base", runs / "nb-2", ignore=shutil.ignore_patterns("sft", "preferences"))
    for name, value in (("EWB_ARTIFACTS", str(run_inputs / "artifacts")), ("CUDA_VISIBLE_DEVICES", ""),
                        ("OMP_NUM_THREADS", "1"), ("MASTER_PORT", str(free_port()))):
        monkeypatch.setenv(name, value)  # the kernel, and the processes forked from it, inherit them
    papermill.execute_notebook(str(NOTEBOOKS_DIR / NOTEBOOKS["sft"]), str(run_inputs / "01-two-processes.ipynb"),
                               parameters={"preset": "tiny", "run_name": "nb-2", "num_processes": 2, "max_steps": 2,
                                           "eval_steps": 1, "spot_check": False},
                               progress_bar=False, cwd=str(NOTEBOOKS_DIR))
    sft_dir = runs / "nb-2" / "sft"
    metrics = json.loads((sft_dir / "metrics.json").read_text())
    result = json.loads((sft_dir / "train_result.json").read_text())
    assert metrics["processes"] == 2 and result["processes"] == 2 and metrics["steps"] == 2
    assert metrics["backend"] == "cpu" and metrics["trainable_parameters"] > 0
    assert (sft_dir / "merged" / "model.safetensors").exists() and (sft_dir / "adapter" / "adapter_config.json").exists()


def test_leave_destroys_the_group_this_process_joined_and_is_a_no_op_after(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    assert dist.is_initialized()
    distributed.leave()
    assert not dist.is_initialized()
    distributed.leave()  # nothing joined: nothing to do, no error
