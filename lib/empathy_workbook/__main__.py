"""Command line: `python -m empathy_workbook run --preset tiny` (also installed as `empathy-workbook`).

    empathy-workbook run --preset tiny --run demo             # notebooks 00-05, unchanged phases skipped
    empathy-workbook run --run demo --from dpo                # reuse 00-02, re-run 03-05
    empathy-workbook run --run demo --to data                 # only notebook 00
    empathy-workbook run --run demo --force                   # re-run everything
    empathy-workbook report --run demo                        # rebuild report.html from summary.json

Training alone, in one process or in several started by accelerate (one per GPU; README, "More than one GPU"):
    python -m empathy_workbook sft --preset qwen3-0.6b --run real
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 4 \
        -m empathy_workbook dpo --preset qwen3-0.6b --run real --set dpo.beta=0.2
These write the phase's adapter, merged model, log_history.json and train_result.json; notebooks 01/03 train the
same way when their num_processes parameter is above 1. `sample` fills notebook 02's candidates.jsonl and the judge
cache the same way (every process samples and judges a share); the notebook then reuses both.
"""

from __future__ import annotations

import argparse
import sys

from .registry import NOTEBOOKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="empathy-workbook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebooks in order with papermill")
    run.add_argument("--preset", default="tiny", help="configs/<name>.yaml or a .yaml path (default: tiny)")
    run.add_argument("--run", default="demo", dest="run_name", help="folder under artifacts/runs/ (default: demo)")
    run.add_argument("--from", dest="from_phase", choices=list(NOTEBOOKS),
                     help="start at this phase, reusing the outputs of earlier ones as they are")
    run.add_argument("--to", dest="to_phase", choices=list(NOTEBOOKS), help="stop after this phase")
    run.add_argument("--force", action="store_true", help="re-run phases even when nothing changed")
    run.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    run.add_argument("--num-processes", type=int, default=1, metavar="N",
                     help="train in notebooks 01 and 03 with N processes, one per GPU (default: 1)")
    report = commands.add_parser("report", help="rebuild report.html from an existing summary.json")
    report.add_argument("--run", default="demo", dest="run_name")
    # One phase's long step alone; under `accelerate launch` every process runs it and they share the work.
    for name, what in (("sft", "notebook 01's LoRA training"), ("dpo", "notebook 03's DPO training"),
                       ("sample", "notebook 02's rejected answers and judge scores (the notebook then reuses them)")):
        step = commands.add_parser(name, help=f"{what}; under `accelerate launch`, in every process")
        step.add_argument("--preset", default="tiny", help="configs/<name>.yaml or a .yaml path (default: tiny)")
        step.add_argument("--run", default="demo", dest="run_name", help="folder under artifacts/runs/")
        step.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="settings",
                          help="override a preset value (YAML value), e.g. --set sft.train.max_steps=20; repeatable")
    return parser


def parse_settings(settings: list[str]) -> dict:
    """{'a.b=1', 'a.c=x'} → {'a': {'b': 1, 'c': 'x'}}: overrides in the shape load_config takes."""
    import yaml

    overrides: dict = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. sft.train.max_steps=20")
        *parents, leaf = key.strip().split(".")
        node = overrides
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .pipeline.runner import RunnerError
    from .pipeline.runtime import MissingPhaseError

    try:
        if args.command == "sample":
            from .distributed import is_main_process
            from .phases.preferences import sample_phase

            result = sample_phase(args.preset, args.run_name, parse_settings(args.settings))
            if is_main_process():
                print(f"sample: {result['candidates']} rejected answers, judged by {', '.join(result['judges'])}")
        elif args.command in ("sft", "dpo"):
            from importlib import import_module

            result = import_module(f".phases.{args.command}", __package__).train_phase(
                args.preset, args.run_name, parse_settings(args.settings))
            from .distributed import is_main_process

            if is_main_process():
                print(f"{args.command}: {result['global_step']} updates in {result['seconds']:.1f} s on "
                      f"{result['processes']} process(es), backend {result['backend']}")
        elif args.command == "run":
            from .pipeline.runner import run_pipeline

            summary = run_pipeline(args.preset, args.run_name, args.from_phase, args.to_phase, args.force,
                                   progress=not args.no_progress, num_processes=args.num_processes)
            ran = [p for p, e in summary["phases"].items() if e["status"] == "ran"]
            print(f"done in {summary['seconds']:.1f} s: ran {ran or 'nothing'}, "
                  f"skipped {[p for p, e in summary['phases'].items() if e['status'] == 'skipped'] or 'nothing'}")
        else:
            from .io import read_json
            from .paths import RunPaths
            from .pipeline.report import write_report

            paths = RunPaths.for_run(args.run_name)
            if not paths.summary_json.exists():
                raise RunnerError(f"{paths.summary_json} is missing: run `empathy-workbook run --run {args.run_name}` first")
            print(write_report(paths.root, read_json(paths.summary_json)))
    except (RunnerError, MissingPhaseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        from .distributed import leave

        leave()  # under `accelerate launch`, the training and sampling commands joined a process group
    return 0


if __name__ == "__main__":
    sys.exit(main())
