"""`train(cfg, workdir)`: build the experiment, then run it with the Trainer's default hooks.

The same command continues a killed run (ftjax.train.trainer); SIGTERM / Ctrl-C save and stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ftjax.train.experiment import Experiment
from ftjax.train.restore import build_run_experiment
from ftjax.train.hooks import Hook, NonFiniteLossError
from ftjax.train.trainer import RunResult, Trainer

__all__ = ["NonFiniteLossError", "RunResult", "train"]


def train(cfg, workdir, *, quiet: bool = False, experiment: Experiment | None = None,
          hooks: Sequence[Hook] = (), allow_config_change: bool = False,
          allow_inexact_resume: bool = False) -> RunResult:
    """Train (or resume) `cfg` in `workdir`. The experiment is built, and its data checked,
    before anything is written to the workdir. Resuming with a config that changes what is
    trained, or from a checkpoint without this process's data position, is refused unless
    allowed (ftjax.train.workdir)."""
    exp = experiment or build_run_experiment(cfg)
    return Trainer(exp, Path(workdir), hooks=hooks, quiet=quiet,
                   allow_config_change=allow_config_change,
                   allow_inexact_resume=allow_inexact_resume).fit()
