"""A ``SourceSchedule`` applied to iterators: for streams whose elements cannot be indexed.

Packed rows (documents packed first-fit), the windows of multi-row tasks and length-grouped
batches only exist as iterators: how many rows a record gives is known after featurizing it. So
where the schedule picks among such streams, ``ScheduledMix`` takes the next element of the
source that the schedule names for its position. Its state is that position and each parent's
state, so ``set_state`` on a fresh iterator (also in a fresh process) continues exactly.

With several hosts, host h's i-th element is unit ``i * stride + offset`` of the schedule:
stride = shard_count and offset = shard_index when each host takes every shard_count-th unit
of a global stream of rows; stride 1, offset 0 when every host's i-th element is its share of
global unit i (per-source batches: all hosts then draw the same source for batch i).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import grain

from ftjax.data.errors import DataError
from ftjax.data.schedule import SourceSchedule


class ScheduledMix(grain.IterDataset):
    """The elements of ``parents`` in the order ``schedule`` draws their sources."""

    def __init__(self, parents: Sequence[grain.IterDataset], schedule: SourceSchedule, *,
                 stride: int = 1, offset: int = 0):
        super().__init__(list(parents))
        if len(parents) != schedule.num_sources:
            raise DataError(f"the schedule draws among {schedule.num_sources} sources, got "
                            f"{len(parents)} streams")
        if stride < 1 or not 0 <= offset < stride:
            raise DataError(f"need stride >= 1 and 0 <= offset < stride, got {stride}, {offset}")
        self._schedule, self._stride, self._offset = schedule, stride, offset

    def __iter__(self) -> grain.DatasetIterator:
        return _ScheduledMixIterator([parent.__iter__() for parent in self._parents],
                                     self._schedule, stride=self._stride, offset=self._offset)

    def __str__(self) -> str:
        return f"ScheduledMix({self._schedule!r}, stride={self._stride}, offset={self._offset})"


class _ScheduledMixIterator(grain.DatasetIterator):
    def __init__(self, parents: list[grain.DatasetIterator], schedule: SourceSchedule, *,
                 stride: int, offset: int):
        super().__init__(parents)
        self._schedule, self._stride, self._offset = schedule, stride, offset
        self._position = 0  # elements returned so far

    def __next__(self) -> Any:
        source, _ = self._schedule[self._position * self._stride + self._offset]
        element = next(self._parents[source])
        self._position += 1
        return element

    def get_state(self) -> dict[str, Any]:
        return {"position": self._position,
                "parents": [copy.deepcopy(parent.get_state()) for parent in self._parents]}

    def set_state(self, state: dict[str, Any]) -> None:
        for parent, parent_state in zip(self._parents, state["parents"], strict=True):
            parent.set_state(parent_state)
        self._position = state["position"]

    def __str__(self) -> str:
        return "ScheduledMixIterator"


__all__ = ["ScheduledMix"]
