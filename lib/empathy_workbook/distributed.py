"""More than one process (one per GPU) through accelerate: who am I, how the batch is shared, how work is split.

Training: `accelerate launch` (or `launch_in_notebook` from a notebook) starts N copies of a phase's entry point
(sft.train_phase, dpo.train_phase). Each process trains on its share of every optimizer step's rows; the preset's
effective batch (batch_size x grad_accum) is kept by giving each process fewer micro-batches (per_process_schedule),
and `once_per_epoch_sampler` deals every training row to exactly one process once per epoch.

Generation and judging: `map_in_order` gives each process a contiguous share of the work items
(accelerate's split_between_processes), gathers the results on every process and puts them back in the
original order. With one process it is a plain call.

Nothing here initialises CUDA or a process group at import time, and the environment variables that the
launchers set (WORLD_SIZE, RANK, LOCAL_RANK) are read instead of asking torch, so a notebook kernel can call
these helpers before it starts the processes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Sequence


def world_size() -> int:
    """Number of processes of this run (1 unless a launcher started several)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_index() -> int:
    """This process's global rank (0 on the main process)."""
    return int(os.environ.get("RANK", "0"))


def local_process_index() -> int:
    """This process's rank on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on the one process that writes files and prints results."""
    return process_index() == 0


def sharded_launcher() -> str | None:
    """'deepspeed' or 'fsdp' when accelerate launched this process with one of them (the model is then sharded
    and must not be placed on a device by the loader), else None."""
    for name, variable in (("deepspeed", "ACCELERATE_USE_DEEPSPEED"), ("fsdp", "ACCELERATE_USE_FSDP")):
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            return name
    return None


def process_state():
    """accelerate's PartialState of this process group: NCCL between GPUs, gloo between CPU processes.

    On a machine without CUDA it must be told so (cpu=True); otherwise it treats processes started by torchrun or
    `accelerate launch` as unrelated single processes. A trainer made earlier has already set it up the same way.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def per_process_schedule(batch_size: int, grad_accum: int, processes: int) -> tuple[int, int]:
    """(batch_size, grad_accum) per process so that N processes update on the preset's effective batch.

    The rows per update stay batch_size x grad_accum: a preset means the same optimisation on one GPU or
    eight. Accumulation steps are removed first (they cost time, not memory); the batch shrinks only when
    they run out. Raises when the effective batch cannot be shared evenly.
    """
    effective = batch_size * grad_accum
    for per_device in range(batch_size, 0, -1):
        if effective % (processes * per_device) == 0:
            return per_device, effective // (processes * per_device)
    raise ValueError(f"train.batch_size x grad_accum = {effective} rows per update cannot be shared by {processes} "
                     f"processes: choose a batch_size and grad_accum whose product is a multiple of {processes}")


_SAMPLER_CLASS = None


def once_per_epoch_sampler(lengths: Sequence[int], effective_batch_size: int, processes: int, grad_accum: int,
                           rank: int, seed: int):
    """A batch sampler that deals every row to exactly one (process, micro-batch) once per epoch.

    transformers' BatchRebalanceSampler does the work: each optimizer step takes the next `effective_batch_size`
    rows of a seeded permutation (the same on every process, no communication), and splits them into
    processes x grad_accum micro-batches of about equal padded cost. So the rows of an update do not depend on
    the number of processes. What it does not do is avoid repeats: when the last step has fewer rows than
    micro-batches it pads that step with rows from the start of the epoch. Here such a short tail is added to
    the step before it instead, so no row is seen twice and none is lost.
    """
    global _SAMPLER_CLASS
    if _SAMPLER_CLASS is None:
        from transformers.trainer_pt_utils import BatchRebalanceSampler

        class OncePerEpochSampler(BatchRebalanceSampler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs, drop_last=False)
                groups = self.dp_size * self.grad_accum
                if len(self.lengths) < groups:
                    raise ValueError(f"{len(self.lengths)} training rows cannot fill {self.dp_size} processes x "
                                     f"{self.grad_accum} accumulation steps: use fewer processes or more data")
                # a tail too short to give every micro-batch a row joins the last full step
                self.fold_tail = self.has_tail and self.remainder < groups and self.num_full_batches > 0
                if self.fold_tail:
                    self.num_global_batches -= 1

            def __iter__(self):
                import torch

                generator = torch.Generator()
                generator.manual_seed(self.seed + self.epoch)
                order = torch.randperm(len(self.lengths), generator=generator).tolist()
                steps = [order[i * self.effective_batch_size:(i + 1) * self.effective_batch_size]
                         for i in range(self.num_full_batches)]
                tail = order[self.num_full_batches * self.effective_batch_size:]
                if tail and self.fold_tail:
                    steps[-1] = steps[-1] + tail
                elif tail:
                    steps.append(tail)
                for rows in steps:
                    yield from self._yield_global_batch(rows)

        _SAMPLER_CLASS = OncePerEpochSampler
    return _SAMPLER_CLASS(lengths=list(lengths), effective_batch_size=effective_batch_size, dp_size=processes,
                          grad_accum=grad_accum, shuffle=True, seed=seed, rank=rank)


_SPLITTING = ContextVar("splitting", default=False)  # inside a share already: nested calls stay in this process


def map_in_order(fn: Callable[[list], list], items: list) -> list:
    """fn(items) computed by all processes together: each takes a contiguous share, every process gets all results
    back in the order of `items`. fn must return one result per item it was given (it may be given none).

    Every process must call it with the same items. A call made inside fn (e.g. generate() within a chunk of
    rejected answers) runs on its process's share alone: the processes are already busy with different items.
    """
    if world_size() == 1 or _SPLITTING.get():
        return list(fn(list(items)))
    from accelerate.utils import gather_object

    state = process_state()
    indexed = list(enumerate(items))
    with state.split_between_processes(indexed) as share:
        token = _SPLITTING.set(True)
        try:
            results = list(fn([item for _, item in share])) if share else []
        finally:
            _SPLITTING.reset(token)
        if len(results) != len(share):
            raise ValueError(f"{len(results)} results for {len(share)} items on process {state.process_index}")
        local = [(index, result) for (index, _), result in zip(share, results)]
    gathered = gather_object(local)
    ordered = sorted(gathered, key=lambda pair: pair[0])
    if [index for index, _ in ordered] != list(range(len(items))):
        raise RuntimeError("gathered results do not cover every item exactly once")
    return [result for _, result in ordered]


def gather_values(value) -> list:
    """[value of process 0, value of process 1, ...] on every process (a one-item list in one process)."""
    if world_size() == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


@contextmanager
def main_process_first():
    """The main process runs the block first (building a cached model, cleaning a folder), the others after it."""
    if world_size() == 1:
        yield
        return
    with process_state().main_process_first():
        yield


def wait_for_everyone() -> None:
    """A barrier across the processes (no-op in one process): e.g. nobody reads a file before it is written."""
    if world_size() > 1:
        process_state().wait_for_everyone()


def leave() -> None:
    """Destroy this process's group, if it joined one, before the interpreter exits.

    Left to interpreter shutdown, gloo's threads can be torn down during the final garbage collection: a worker
    once aborted ("terminate called without an active exception", SIGABRT) after writing every result (CI,
    2026-12-07), and torch warns about a group never destroyed. Safe to call with one process or none joined.
    """
    import sys

    if "torch" not in sys.modules:  # no group without torch; don't pay its import for commands that never used it
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch_in_notebook(function: Callable, args: tuple, num_processes: int):
    """Run `function(*args)` in `num_processes` processes from a notebook (accelerate.notebook_launcher).

    The processes are forked from the kernel, so CUDA must not have been touched in it, and neither bitsandbytes nor
    Unsloth imported (both initialise CUDA on import). Checked here first, with the remedy in the message.
    """
    import sys

    import torch

    if num_processes < 2:
        raise ValueError("launch_in_notebook is for 2 or more processes; with 1, call the function directly")
    touched = [name for name in ("unsloth", "bitsandbytes") if name in sys.modules]
    if torch.cuda.is_initialized() or touched:
        what = f"{', '.join(touched)} was imported" if touched else "CUDA was initialised"
        raise RuntimeError(f"{what} in this kernel before the processes were started, and forked processes cannot "
                           "use the GPU then: restart the kernel and run the notebook from the top with "
                           f"num_processes = {num_processes} (no cell before this one may use the GPU)")
    from accelerate import notebook_launcher

    return notebook_launcher(function, args, num_processes=num_processes)
