"""Several processes (multi-host): who writes the run's files, and reading whole arrays back.

With jax.distributed every process runs the same program on its own devices. Files a run writes
once (metrics, reports, results, adapters) are written by process 0 alone: two writers of one
file on a shared filesystem race (a `results.json.tmp` renamed away under the other). Values a
file needs may live on other hosts' devices, so reading them is a collective every process
joins (`fetch`), even those that then write nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_primary() -> bool:
    """True on the process that writes the run's files (process 0; the only one on one host)."""
    return jax.process_index() == 0


def fetch(tree: Any) -> Any:
    """Every array of `tree` as a whole numpy array, on every process.

    An array split over several processes' devices is gathered (a collective: call this on all
    processes, in the same order); one this process holds whole is simply copied to the host.
    """
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def agreed_max(value: int) -> int:
    """The largest of every process's `value` (a collective: call it on all processes, in the
    same order); `value` itself on one process."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))
