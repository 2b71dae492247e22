"""`python -m ftjax.sweep.worker RUN_DIR`: one sweep run in a process of its own.

The runner starts it when the sweep sets `isolate`: a fresh process per run is the only way to
read one run's peak device memory (a process's peak_bytes_in_use never goes down), and it
returns every byte to the system between runs. RUN_DIR holds run.json (the RunSpec); the
result goes to RUN_DIR/result.json exactly as in-process runs write it. Exit code 130: the
run was interrupted (its checkpoint is saved), 0 otherwise (a failure is in result.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ftjax.sweep.plan import RunSpec
from ftjax.sweep.runner import SweepInterrupted, execute


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ftjax.sweep.worker RUN_DIR", file=sys.stderr)
        return 2

    run_dir = Path(argv[0])
    job = json.loads((run_dir / "run.json").read_text())
    try:
        execute(RunSpec.from_json(job["spec"]), run_dir,
                keep_checkpoints=job["keep_checkpoints"], isolated=True)
    except SweepInterrupted as err:
        print(err, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
