"""Rows of several tasks in one batch (multi-task fine-tuning: one backbone, a head per task).

Tasks disagree on their features: a classification row has one label, a NER row a tag per
token, a QA row a start and an end position. A batch holds rows of several tasks, so every row
carries every task's features: the tokens (input_ids, masks, positions ...) and the row's
"source" / "example_id" are shared; "task_id" is the row's task (its index among the run's tasks); each task's own features are
renamed "<feature>@<task>"
("labels@topic", "loss_mask@ner", "start_positions@qa"), and a row of task A holds zeros in
task B's features, masks included, so B's loss and metric never count it. All tasks therefore
give rows of one shape set, and one compiled step serves any mix of them.

`TaskOfMany` wraps one task of the run for this; `task_view(batch, task)` is the batch as that
task alone sees it (its own features under their plain names), which the task's loss term
(ftjax.objectives.TaskTerm) and metric read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.features import (
    EXAMPLE_FEATURE,
    SOURCE_FEATURE,
    TASK_ID_FEATURE,
    TASK_SEPARATOR,
    TOKEN_FEATURES,
    Row,
    Shapes,
)
from ftjax.data.extractive_qa import ExtractiveQA
from ftjax.data.tasks import SequenceClassification, Task
from ftjax.data.token_classification import TokenClassification
from ftjax.data.types import TokenizerLike

SHARED_FEATURES = (*TOKEN_FEATURES, SOURCE_FEATURE, EXAMPLE_FEATURE, TASK_ID_FEATURE)
# Each task's headline figure on a 0..1 scale, which the tasks' mean `score` averages:
# (metric, scale).
SCORES = {SequenceClassification: ("accuracy", 1.0), TokenClassification: ("f1", 1.0),
          ExtractiveQA: ("f1", 0.01)}


def task_feature(feature: str, task: str) -> str:
    """The name of a task's own feature in a multi-task batch."""
    return f"{feature}{TASK_SEPARATOR}{task}"


def task_view(batch: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The shared features of `batch` and `task`'s own features under their plain names."""
    suffix = f"{TASK_SEPARATOR}{task}"
    view = {name: value for name, value in batch.items() if name in SHARED_FEATURES}
    view.update({name[: -len(suffix)]: value for name, value in batch.items()
                 if name.endswith(suffix)})
    return view


def _own_shapes(task: Task) -> Shapes:
    return {name: spec for name, spec in task.row_shapes().items()
            if name not in SHARED_FEATURES}


@dataclasses.dataclass(frozen=True)
class TaskOfMany:
    """Task `name` of a multi-task run whose tasks are `tasks` ((name, task) pairs in the run's
    order, this one among them): rows of `task` with every task's features (see the module
    docstring). Its predictions and metric are the wrapped task's, on its own head's logits
    and on the batch as it sees it."""

    name: str
    task: Task
    tasks: tuple[tuple[str, Task], ...]

    def __post_init__(self):
        names = [n for n, _ in self.tasks]
        if self.name not in names:
            raise DataError(f"task {self.name!r} is not one of the run's tasks {names}")
        if self.task.packed:
            raise DataError(f"task {self.name!r}: packed tasks cannot share batches with "
                            f"other tasks")
        lengths = {n: t.max_length for n, t in self.tasks}
        if len(set(lengths.values())) > 1:
            raise DataError(f"the tasks of a multi-task run share rows, so they need one "
                            f"max_length; got {lengths}")

    @property
    def packed(self) -> bool:
        return False

    @property
    def max_length(self) -> int:
        return self.task.max_length

    @property
    def multi_row(self) -> bool:
        """Whether rows come as lists: when ANY task of the run makes several rows of a record
        (QA windows), every task does (one-row lists), since the sources share a pipeline."""
        return any(getattr(task, "multi_row", False) for _, task in self.tasks)

    def row_shapes(self) -> Shapes:
        shapes = {name: spec for name, spec in self.task.row_shapes().items()
                  if name in SHARED_FEATURES}
        for name, task in self.tasks:
            shapes.update({task_feature(f, name): spec for f, spec in _own_shapes(task).items()})
        shapes[TASK_ID_FEATURE] = ((), np.dtype(np.int32))
        return shapes

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_TaskRows":
        blanks = {task_feature(f, name): np.zeros(shape, dtype)
                  for name, task in self.tasks if name != self.name
                  for f, (shape, dtype) in _own_shapes(task).items()}
        index = [n for n, _ in self.tasks].index(self.name)
        return _TaskRows(self.task.featurizer(tokenizer, seed=seed), self.name, blanks,
                         as_list=self.multi_row, index=index)

    def predict(self, logits: Mapping[str, Any]) -> dict:
        """Every task's predictions from its own head's logits ({task: predictions}): the
        eval step's one program serves eval batches of any task."""
        return {name: task.predict(logits[name]) for name, task in self.tasks
                if hasattr(task, "predict")}

    def score(self, metrics: Mapping[str, float]) -> float | None:
        """The task's headline figure in `metrics` on a 0..1 scale (accuracy, entity F1, QA F1
        / 100), for the mean over tasks that selects checkpoints; None if it is missing."""
        metric, scale = SCORES.get(type(self.task), (None, 1.0))
        return None if metric not in metrics else metrics[metric] * scale

    def metric(self, records: Sequence, tokenizer: TokenizerLike):
        """The wrapped task's metric over `records`, reading this task's view of each batch;
        None when the task has none."""
        if not hasattr(self.task, "metric"):
            return None
        return _TaskMetric(self.task.metric(records, tokenizer), self.name)


class _TaskRows:
    """The wrapped featurizer's rows, renamed and completed with the other tasks' blanks."""

    def __init__(self, featurize, name: str, blanks: dict[str, np.ndarray], *, as_list: bool,
                 index: int):
        self.featurize, self.name, self.blanks = featurize, name, blanks
        self.as_list, self.index = as_list, index

    def __call__(self, item) -> Row | list[Row]:
        rows = self.featurize(item)
        if isinstance(rows, list):
            return [self._complete(row) for row in rows]
        return [self._complete(rows)] if self.as_list else self._complete(rows)

    def _complete(self, row: Row) -> Row:
        out = {(f if f in SHARED_FEATURES else task_feature(f, self.name)): value
               for f, value in row.items()}
        out.update({f: blank.copy() for f, blank in self.blanks.items()})
        out[TASK_ID_FEATURE] = np.asarray(self.index, np.int32)
        return out


class _TaskMetric:
    def __init__(self, metric, name: str):
        self.metric, self.name = metric, name
        self.names = metric.names

    def update(self, batch, predictions) -> None:
        self.metric.update(task_view(batch, self.name), predictions[self.name])

    def result(self) -> dict[str, float]:
        return self.metric.result()


__all__ = ["SHARED_FEATURES", "TaskOfMany", "task_feature", "task_view"]
