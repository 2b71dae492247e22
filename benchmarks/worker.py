"""`python -m benchmarks.worker JOB_JSON`: run one Job in this process, print one result line.

The runner starts one worker per job so that each implementation's peak memory is its own and
no framework's allocator or compile cache carries over to the next.
"""

from __future__ import annotations

import json
import sys

from benchmarks.specs import Job

RESULT_PREFIX = "BENCH_RESULT "


def main(argv: list[str]) -> int:
    job = Job(**json.loads(argv[0]))
    if job.impl == "ftjax":
        from benchmarks.jax_worker import run
    elif job.impl in ("torch", "torch.compile"):
        from benchmarks.torch_worker import run
    else:
        raise SystemExit(f"unknown impl {job.impl!r}")
    result = run(job)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
