"""Metrics computed from a task's predictions, on the host, over a whole evaluation split.

The eval step runs each task's `predict(logits)` (a pure function, inside the jitted step) and
hands the host a few small arrays per batch; a task's `metric(records, tokenizer)` gathers
them with the batch's own features (`example_id` maps a row back to its record) and scores the
split with the field's standard implementation. The loss-based metrics (loss, accuracy of the
task term) come from the eval step's sums and need no predictions.

    class TaskMetric(Protocol):
        names: tuple[str, ...]           # the keys result() gives (for best_metric checks)
        def update(self, batch, predictions) -> None   # numpy arrays of one eval batch
        def result(self) -> dict[str, float]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class TaskMetric(Protocol):
    names: tuple[str, ...]

    def update(self, batch: Mapping[str, np.ndarray],
               predictions: Mapping[str, np.ndarray]) -> None: ...

    def result(self) -> dict[str, float]: ...


def real_rows(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """The rows of a batch that are records (filler rows have example_id -1)."""
    return np.asarray(batch["example_id"]) >= 0


class ClassificationMetric:
    """Macro-averaged F1 over the classes (scikit-learn), beside the loss term's accuracy."""

    names = ("macro_f1",)

    def __init__(self, num_labels: int):
        self.labels = list(range(num_labels))
        self.gold: list[np.ndarray] = []
        self.predicted: list[np.ndarray] = []

    def update(self, batch, predictions) -> None:
        rows = real_rows(batch)
        self.gold.append(np.asarray(batch["labels"])[rows])
        self.predicted.append(np.asarray(predictions["label"])[rows])

    def result(self) -> dict[str, float]:
        # scikit-learn is imported here, at the first evaluation, not when the data package
        # is: it takes about 0.9 s (scipy, pandas), which every start would otherwise pay.
        from sklearn.metrics import f1_score

        gold, predicted = np.concatenate(self.gold), np.concatenate(self.predicted)
        return {"macro_f1": float(f1_score(gold, predicted, labels=self.labels,
                                           average="macro", zero_division=0))}
