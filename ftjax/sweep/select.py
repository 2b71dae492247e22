"""From run records to table rows: the learning rate chosen on validation, test mean +- std.

A record is the dict a finished run writes to its result.json (ftjax.sweep.runner): `task`,
`method`, `lr`, `seed`, `phase`, `status` ("done" or "failed") and, when done, the measurements
(`validation_accuracy`, `test_accuracy`, `trainable`, `wall_s`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ftjax.sweep.plan import BASELINE, SEARCH, UNTRAINED


def _done(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "done"]


def choose_lr(search_records: Sequence[dict]) -> float | None:
    """The learning rate of the finished seed-0 run with the best validation accuracy.

    Ties (frequent on small validation sets) go to the lower validation loss, then to the
    smaller rate. None when no search run finished.
    """
    done = [r for r in _done(search_records)
            if r.get("phase") == SEARCH and r.get("validation_accuracy") is not None]
    if not done:
        return None
    def key(r):
        loss = r.get("validation_loss")
        return (-r["validation_accuracy"], math.inf if loss is None else loss, r["lr"])

    return min(done, key=key)["lr"]


def beyond(grid: Sequence[float], lr: float | None) -> float | None:
    """The next rate past `lr` when it is the smallest or largest of `grid` (more than one
    rate): one grid step further, the step being the ratio of the two rates nearest that end;
    None when `lr` lies inside the grid (bracketed) or is None."""
    rates = sorted(set(grid))
    if lr is None or len(rates) < 2:
        return None
    if lr == rates[0]:
        return rates[0] * rates[0] / rates[1]
    if lr == rates[-1]:
        return rates[-1] * rates[-1] / rates[-2]
    return None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator, as papers report over
    seeds); the std is None for fewer than two values, both None for none."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _median(values: Sequence[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(records: Sequence[dict], tasks: Sequence[str], methods: Sequence[str],
              seeds: int) -> list[dict]:
    """One row per (task, method), in the given order.

    The row's runs are the chosen rate's seed-0 search run and its seeds 1..seeds-1; the table's
    figures are over those runs: test accuracy mean +- std, median of their median step times,
    the largest memory, mean wall time. Parameter counts and the delta size are the same for
    every seed. A row without a chosen rate (every search run failed) says so in `status`.
    A task's untrained baseline (when the sweep ran one) comes first, as method UNTRAINED.
    """
    rows = []
    for task in tasks:
        baseline = [r for r in records if r.get("task") == task and r.get("phase") == BASELINE]
        if baseline:
            rows.append(_untrained_row(task, baseline[0]))
        for method in methods:
            mine = [r for r in records if r.get("task") == task and r.get("method") == method]
            search = [r for r in mine if r.get("phase") == SEARCH]
            lr = choose_lr(search)
            failed = [r for r in mine if r.get("status") == "failed"]
            row = {"task": task, "method": method, "lr": lr,
                   "grid": sorted({r["lr"] for r in search}),
                   "validation_by_lr": {f"{r['lr']:.3g}": r.get("validation_accuracy")
                                        for r in sorted(_done(search), key=lambda r: r["lr"])},
                   "failed_runs": [r.get("run_id") for r in failed]}
            runs = [] if lr is None else sorted(
                (r for r in _done(mine) if r["lr"] == lr and 0 <= r["seed"] < seeds),
                key=lambda r: r["seed"])
            tests = [r["test_accuracy"] for r in runs if r.get("test_accuracy") is not None]
            mean, std = mean_std(tests)
            grid = row["grid"]
            row["lr_at_edge"] = lr is not None and len(grid) > 1 and lr in (grid[0], grid[-1])
            row["best_steps"] = [r.get("best_step") for r in runs]
            row["final_steps"] = [r.get("final_step") for r in runs]
            row["validation_curve"] = runs[0].get("validation_curve") if runs else None
            row.update(status="ok" if runs else "failed" if lr is None and search else "missing",
                       seeds=[r["seed"] for r in runs], n=len(tests),
                       test_accuracy_mean=mean, test_accuracy_std=std)
            if runs:
                first = runs[0]
                memory = [r.get("memory_bytes") for r in runs if r.get("memory_bytes")]
                walls = [r["wall_s"] for r in runs]
                row.update(
                    model=first.get("model"), trainable=first["trainable"],
                    total=first["total"], trainable_share=first["trainable_share"],
                    delta_bytes=first["delta_bytes"],
                    step_time_s=_median([r.get("step_time_s") for r in runs]),
                    memory_bytes=max(memory) if memory else None,
                    memory_kind=first.get("memory_kind"),
                    wall_s=sum(walls) / len(walls),
                )
            rows.append(row)
    _compare_with_untrained(rows)
    return rows


def _compare_with_untrained(rows: list[dict]) -> None:
    """Mark each row whose mean test accuracy is below its task's untrained row's."""
    untrained = {r["task"]: r for r in rows if r["method"] == UNTRAINED}
    for row in rows:
        base = untrained.get(row["task"])
        row["below_untrained"] = bool(
            row["method"] != UNTRAINED and base is not None
            and None not in (row.get("test_accuracy_mean"), base.get("test_accuracy_mean"))
            and row["test_accuracy_mean"] < base["test_accuracy_mean"])


def _untrained_row(task: str, record: dict) -> dict:
    """The baseline row: one evaluation, nothing trained (no rate, step time or memory)."""
    row = {"task": task, "method": UNTRAINED, "lr": None, "grid": [], "validation_by_lr": {},
           "failed_runs": [], "status": "ok", "seeds": [0], "n": 1, "test_accuracy_std": None,
           "test_accuracy_mean": record.get("test_accuracy"),
           "validation_accuracy": record.get("validation_accuracy")}
    if record.get("status") != "done":
        return {**row, "status": "failed", "seeds": [], "n": 0, "test_accuracy_mean": None,
                "failed_runs": [record.get("run_id")]}
    return {**row, **{k: record.get(k) for k in _MEASURED}}


# A row's figures that a baseline record carries as measured (ftjax.sweep.runner).
_MEASURED = ("model", "trainable", "total", "trainable_share", "delta_bytes", "step_time_s",
             "memory_bytes", "memory_kind", "wall_s")
