"""Continual learning's measurements: the accuracy matrix of a task sequence and what it says
about forgetting and transfer.

A task sequence is a pipeline (ftjax.train.stages): stage i trains on task i's source, starting
from stage i-1's final weights (`init_from`), while every task's source is evaluated (the others
with `train = False`), so stage i's results hold its model's score on every task, seen or not:

    R[i][j] = the score of the model after stage i on task j (its test split),

and the model before any training (the first stage's evaluation at step 0, `eval_at_start`)
gives b[j]. From them (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018), with T tasks:

    average accuracy  ACC = mean_j R[T-1][j]
    backward transfer BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])       (< 0: forgetting)
    forgetting        F   = mean_{j<T-1} (max_{j<=i<T-1} R[i][j] - R[T-1][j])
    forward transfer  FWT = mean_{j>0} (R[j-1][j] - b[j])

For a metric where lower is better (perplexity), BWT and FWT keep these formulas (a positive
BWT is then forgetting) and forgetting takes the best earlier score as the minimum,
F = mean_{j<T-1} (R[T-1][j] - min_{j<=i<T-1} R[i][j]), so it stays positive when a task got
worse. An arm that trains a separate model per task (an adapter per task on a
frozen base) keeps each task's own model: `own_model_per_task` reads R[i][j] for j <= i from
the stage that trained task j.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from ftjax.settings import ConfigError
from ftjax.train.record import metrics_at_step


def _entry(eval_results: dict, split: str, source: str, metric: str, where: str) -> float:
    key = f"{split}/{source}"
    values = eval_results.get(key)
    if values is None and not any(k.startswith(f"{split}/") for k in eval_results):
        values = eval_results.get(split)  # a run of one source reports it as the split
    if values is None or metric not in values:
        raise ConfigError(f"{where}: no {metric!r} for {key} in its results (is every task's "
                          f"source in each stage, evaluated?)")
    return float(values[metric])


def accuracy_matrix(root: str | Path, stages: Sequence[str], sources: Sequence[str], *,
                    split: str = "test", metric: str = "score",
                    own_model_per_task: bool = False) -> list[list[float]]:
    """R[i][j]: `metric` of source j's `split` in stage i's results.json (stages in order, one
    per task; sources in the same order)."""
    if len(stages) != len(sources):
        raise ConfigError(f"a task sequence has one stage per task: {len(stages)} stages, "
                          f"{len(sources)} tasks")
    root = Path(root)
    measured = []
    for stage in stages:
        results_file = root / stage / "results.json"
        if not results_file.is_file():
            raise ConfigError(f"{root / stage}: no results.json (the stage has not finished)")
        results = json.loads(results_file.read_text())["eval"]
        measured.append([_entry(results, split, source, metric, str(root / stage))
                         for source in sources])
    if not own_model_per_task:
        return measured
    return [[measured[j][j] if j <= i else measured[i][j] for j in range(len(sources))]
            for i in range(len(stages))]


def initial_scores(root: str | Path, first_stage: str, sources: Sequence[str], *,
                   split: str = "test", metric: str = "score") -> list[float] | None:
    """b[j]: the untrained model's `metric` on each source, from the first stage's evaluation
    at step 0 (None when it did not evaluate `split` then: set eval_at_start, and eval_splits
    to include the split)."""
    at_start = metrics_at_step(Path(root) / first_stage, 0)
    if not at_start:
        return None
    out = []
    for source in sources:
        value = at_start.get(f"{split}/{source}/{metric}")
        if value is None:
            return None
        out.append(float(value))
    return out


def transfer_metrics(matrix: Sequence[Sequence[float]],
                     initial: Sequence[float] | None = None, *,
                     lower_is_better: bool = False) -> dict[str, float | None]:
    """ACC, BWT, forgetting and FWT of a score matrix (see the module doc); FWT is None
    without the initial scores, BWT / forgetting / FWT None for a single task.
    lower_is_better: the scores are losses or perplexities (forgetting from the minimum)."""
    tasks = len(matrix)
    if tasks == 0 or any(len(row) != tasks for row in matrix):
        raise ValueError(f"an accuracy matrix is T x T, got {[len(r) for r in matrix]} rows")
    last = matrix[-1]
    earlier = range(tasks - 1)
    mean = lambda xs: math.fsum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "average": mean(list(last)),
        "backward_transfer": mean([last[j] - matrix[j][j] for j in earlier]),
        "forgetting": mean([last[j] - min(matrix[i][j] for i in range(j, tasks - 1))
                            if lower_is_better else
                            max(matrix[i][j] for i in range(j, tasks - 1)) - last[j]
                            for j in earlier]),
        "forward_transfer": None if initial is None else mean(
            [matrix[j - 1][j] - initial[j] for j in range(1, tasks)]),
    }


def replay_overrides(previous: str, task: str, earlier: Sequence[str],
                     share: float) -> list[str]:
    """A pipeline stage's overrides (ftjax.train.stages, "{root}" for the pipeline's root) to
    train source `task` beside the replay buffer of stage `previous`: the buffer continued, and
    each earlier task's source trained on the records it holds, the earlier sources together
    `share` of the rows."""
    if not earlier:
        raise ValueError("replay needs an earlier task (the first stage has no buffer)")
    buffer = f"{{root}}/{previous}/replay.json"
    overrides = [f"replay.continue_from='{buffer}'", f"sources.{task}.weight={1 - share}"]
    for name in earlier:
        overrides += [f"sources.{name}.train=True", f"sources.{name}.replay_from='{buffer}'",
                      f"sources.{name}.weight={share / len(earlier)}"]
    return overrides


__all__ = ["accuracy_matrix", "initial_scores", "replay_overrides", "transfer_metrics"]
