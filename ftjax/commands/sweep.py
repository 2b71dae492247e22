"""`ftjax sweep CONFIG [--set k=v] [--out DIR] [--workdir DIR] [--report-only | --plan]`.

Runs a comparison sweep (ftjax.sweep: methods x learning-rate grid x seeds over task variants),
then writes its table (Markdown, CSV, JSON) and plots (PNG). Rerunning skips finished runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftjax.commands.errors import fail, user_errors


def add_arguments(parser) -> None:
    parser.add_argument("config",
                        help="sweep config file, e.g. experiments/paper_polarity.py:reduced")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key (repeatable), e.g. --set seeds=2 or "
                             "--set overrides=\"('steps=5',)\" for every run")
    parser.add_argument("--out", default=None,
                        help="directory of the tables and plots (default: the config's "
                             "results_dir, next to the config file)")
    parser.add_argument("--workdir", default=None,
                        help="sweep directory with one directory per run (default: the "
                             "config's workdir)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report-only", action="store_true",
                      help="write the table and plots from the finished runs; train nothing")
    mode.add_argument("--plan", action="store_true",
                      help="print the runs the sweep would train (search phase) and exit")


def run(args) -> int:
    import dataclasses

    from ftjax.sweep.plan import load_sweep

    try:
        sweep = load_sweep(args.config, args.set)
    except user_errors() as err:
        return fail("sweep", err)
    if args.workdir:
        sweep = dataclasses.replace(sweep, workdir=Path(args.workdir))
    out = Path(args.out) if args.out else sweep.results_dir

    if args.plan:
        for task in sweep.tasks:
            if sweep.baseline:
                print(f"{task.name}/untrained: evaluated as set up, before any step")
            for method in sweep.methods:
                grid = ", ".join(f"{lr:.3g}" for lr in sweep.grids[task.name, method])
                then = ", ".join(str(s) for s in range(1, sweep.seeds))
                print(f"{task.name}/{method}: lr {grid} with seed 0"
                      + (f"; then seed(s) {then} at the best" if then else ""))
        print(f"{sweep.num_runs()} runs in {sweep.workdir}")
        return 0

    from ftjax.sweep import report, runner, select

    if args.report_only:
        records = runner.collect(sweep)
    else:
        if sweep.compilation_cache:
            runner.enable_compilation_cache(sweep)
        print(f"{sweep.name}: {sweep.num_runs()} runs in {sweep.workdir} on "
              f"{runner.device_description()}", flush=True)
        run_all = runner.Runner(sweep, log=lambda line: print(line, flush=True))
        try:
            records = run_all.run_all()
        except runner.SweepInterrupted as err:
            print(f"ftjax sweep: {err}; run the same command to continue", file=sys.stderr)
            return 130
        except KeyboardInterrupt:  # outside a train step (setup, evaluation): nothing to save
            print("ftjax sweep: interrupted; run the same command to continue (the current run "
                  "starts again)", file=sys.stderr)
            return 130
        print(f"{run_all.ran} runs trained, {run_all.skipped} finished before", flush=True)
    rows = select.summarize(records, [t.name for t in sweep.tasks], sweep.methods, sweep.seeds)
    paths = report.write_report(sweep, rows, records, out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    missing = [f"{r['task']}/{r['method']}" for r in rows if r["status"] != "ok"]
    if missing:
        print(f"no result for: {', '.join(missing)}")
    return 1 if any(r["status"] == "failed" for r in rows) else 0
