"""Comparison sweeps: methods x learning rates x seeds over task variants, one table.

    sweep = load_sweep("experiments/paper_polarity.py:reduced")   # plan.py: checked plan
    records = Runner(sweep).run_all()                            # runner.py: resumable runs
    rows = summarize(records, [t.name for t in sweep.tasks], sweep.methods, sweep.seeds)
    write_report(sweep, rows, records, sweep.results_dir)        # report.py: md/csv/json/png

`ftjax sweep CONFIG` (ftjax/commands/sweep.py) does exactly this.
"""

from ftjax.sweep.plan import RunSpec, Sweep, load_sweep
from ftjax.sweep.report import write_report
from ftjax.sweep.select import choose_lr, mean_std, summarize

__all__ = ["RunSpec", "Sweep", "choose_lr", "load_sweep", "mean_std", "summarize",
           "write_report"]
