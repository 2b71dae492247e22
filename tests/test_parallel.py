"""The sharding tests (tests/sharding_cases.py), on 8 faked CPU devices, in their own process.

Why a subprocess: XLA fixes the number of host devices when jax first touches the backend, so
8 devices would have to be set for the whole session in conftest.py. Measured on the 2-core
machine, that makes every other test that trains a real model pay for 8-way data parallelism
(the default mesh): test_methods_polarity.py -k "full or bitfit" took 71 s of CPU on one device
and 118 s on eight (41 s -> 83 s wall for full fine-tuning), because the replicated optimizer
update then runs 8 times on 2 cores. One extra process start (a few seconds) is cheaper.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sharding_cases_on_eight_faked_devices():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
         "ignore::DeprecationWarning", str(REPO / "tests" / "sharding_cases.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    report = proc.stdout[-12000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, report
