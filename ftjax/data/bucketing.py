"""Batches without waste: rows grouped by length, batches cut to a few fixed lengths.

Unpacked rows are padded to ``max_length``, and most texts are far shorter: on the polarity
corpus at 64 tokens about 60% of a batch is padding. Two independent tools remove it:

- ``cut_to_bucket``: a batch's token axis is cut to the shortest of a few fixed lengths
  (``bucket_lengths``) that holds its longest row. Each length compiles the train and eval
  steps once, so a run compiles at most len(buckets) programs, never one per batch.
- ``LengthGroupedBatches``: rows are read in windows of ``window`` batches, sorted by length
  within the window, cut into batches and the window's batches emitted in a seeded random
  order (the megabatch scheme of HF's ``group_by_length``). Batches then hold rows of similar
  length, so the cut above removes most of the padding. The window is a pure function of the
  rows it reads and of (seed, window index), and the iterator's state is its parent's state at
  the window's start plus the batches emitted since, so a resumed run sees the same batches.

A feature is on the token axis when its second axis has the batch's length T (the layout of
``ftjax.data.features``: input_ids, masks, positions, token labels, QA offsets); those are cut,
the per-row features ((B,) labels, example ids) are kept whole.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.features import UNCUT_FEATURES, Row, stack_rows


def bucket_lengths(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
    """The sorted lengths a batch may be cut to: the configured ones up to ``max_length``, and
    ``max_length`` itself (the longest row always fits). () when no buckets are configured."""
    if not buckets:
        return ()
    bad = [b for b in buckets if b < 1]
    if bad:
        raise DataError(f"bucket lengths must be >= 1, got {list(buckets)}")
    return tuple(sorted({*(b for b in buckets if b < max_length), max_length}))


def _positions_needed(attended_T) -> int:
    """Up to the last attended position (rows are right-padded); at least one."""
    attended = np.flatnonzero(attended_T)
    return int(attended[-1]) + 1 if attended.size else 1


def row_length(row: Row) -> int:
    """Positions a row needs."""
    return _positions_needed(np.asarray(row["attention_mask"]))


def batch_length(batch: Row) -> int:
    """Positions the longest row of a batch needs."""
    return _positions_needed(np.asarray(batch["attention_mask"]).any(axis=0))


def fitting_bucket(length: int, buckets: Sequence[int]) -> int:
    """The shortest bucket that holds ``length`` positions."""
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise DataError(f"a row of {length} positions is longer than every bucket {list(buckets)}")


def cut_to_bucket(batch: Row, buckets: Sequence[int], length: int | None = None) -> Row:
    """``batch`` with its token axis cut to the bucket that holds ``length`` positions (its
    longest row's by default; several processes pass the length they agreed on). A batch
    without buckets, or already that long, is returned as it is."""
    if not buckets:
        return batch
    full = np.asarray(batch["input_ids"]).shape[1]
    cut = fitting_bucket(batch_length(batch) if length is None else length, buckets)
    if cut >= full:
        return batch
    return {name: (value[:, :cut] if np.ndim(value) >= 2 and np.shape(value)[1] == full
                   and name not in UNCUT_FEATURES else value)
            for name, value in batch.items()}


def group_order(lengths: Sequence[int], batch_size: int, seed: int, window_index: int
                ) -> list[list[int]]:
    """The batches of one window: positions in the window sorted by length (ties keep their
    order), cut into batches of ``batch_size`` (a short last one when the window is short), in
    an order drawn from (seed, window_index)."""
    by_length = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [by_length[i: i + batch_size] for i in range(0, len(by_length), batch_size)]
    permutation = np.random.default_rng([seed, window_index]).permutation(len(batches))
    return [batches[i] for i in permutation]


class LengthGroupedBatches(grain.IterDataset):
    """Batches of ``batch_size`` rows of similar length from an iterable of rows (see the
    module docstring). A finite parent's last window may end in a short batch; an infinite
    parent (training) only gives full ones."""

    def __init__(self, parent: grain.IterDataset, *, batch_size: int, window: int, seed: int):
        super().__init__(parent)
        if batch_size < 1 or window < 1:
            raise DataError(f"length grouping needs batch_size and window >= 1, got "
                            f"{batch_size} and {window}")
        self._batch_size, self._window, self._seed = batch_size, window, seed

    def __iter__(self) -> grain.DatasetIterator:
        return _LengthGroupedIterator(self._parent.__iter__(), batch_size=self._batch_size,
                                      window=self._window, seed=self._seed)

    def __str__(self) -> str:
        return f"LengthGroupedBatches(batch_size={self._batch_size}, window={self._window})"


class _LengthGroupedIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, *, batch_size: int, window: int,
                 seed: int):
        super().__init__(parent)
        self._batch_size, self._window_batches, self._seed = batch_size, window, seed
        self._window_index = 0
        self._emitted = 0  # batches of the current window already returned
        self._start_state = self._parent.get_state()
        self._rows: list[Row] = []
        self._batches: list[list[int]] = []
        self._exhausted = False

    def _fill(self) -> None:
        self._rows = []
        for _ in range(self._window_batches * self._batch_size):
            try:
                self._rows.append(next(self._parent))
            except StopIteration:
                self._exhausted = True
                break
        self._batches = group_order([row_length(r) for r in self._rows], self._batch_size,
                                    self._seed, self._window_index)

    def __next__(self) -> Row:
        if self._emitted == len(self._batches):
            if self._exhausted:
                raise StopIteration
            if self._batches:  # the last window is spent: start the next
                self._window_index += 1
            self._start_state = self._parent.get_state()
            self._emitted = 0
            self._fill()
            if not self._batches:
                raise StopIteration
        batch = stack_rows([self._rows[i] for i in self._batches[self._emitted]])
        self._emitted += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"parent_window_start": copy.deepcopy(self._start_state),
                "window_index": self._window_index, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._start_state = copy.deepcopy(state["parent_window_start"])
        self._parent.set_state(self._start_state)
        self._window_index = state["window_index"]
        self._exhausted = False
        self._fill()
        self._emitted = min(state["emitted"], len(self._batches))

    def __str__(self) -> str:
        return "LengthGroupedIterator"


__all__ = ["LengthGroupedBatches", "batch_length", "bucket_lengths", "cut_to_bucket",
           "fitting_bucket", "group_order", "row_length"]
