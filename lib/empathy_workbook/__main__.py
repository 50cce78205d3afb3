"""Command line: `python -m empathy_workbook run --preset tiny` (also installed as `empathy-workbook`).

    empathy-workbook run --preset tiny --run demo             # notebooks 00-05, unchanged phases skipped
    empathy-workbook run --run demo --from dpo                # reuse 00-02, re-run 03-05
    empathy-workbook run --run demo --to data                 # only notebook 00
    empathy-workbook run --run demo --force                   # re-run everything
    empathy-workbook report --run demo                        # rebuild report.html from summary.json
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
    report = commands.add_parser("report", help="rebuild report.html from an existing summary.json")
    report.add_argument("--run", default="demo", dest="run_name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .pipeline.runner import RunnerError

    try:
        if args.command == "run":
            from .pipeline.runner import run_pipeline

            summary = run_pipeline(args.preset, args.run_name, args.from_phase, args.to_phase, args.force,
                                   progress=not args.no_progress)
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
    except RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
