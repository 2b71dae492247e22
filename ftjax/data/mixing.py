"""Several record sources in one train stream: the sources, their mixture weights, and the check
that their rows can share a batch. ``pipeline.make_mixed_train_iterator`` builds the stream.

Mixing weights (normalized to probabilities by ``mixture_weights``):

- "fixed": each source's own ``weight``;
- "proportional": its number of records n_i (every record equally likely, as if concatenated);
- "temperature": n_i ** (1 / temperature); temperature 1 is proportional, larger ones flatten
  the mixture towards uniform, so small sources are seen more often than their size says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from ftjax.data.errors import DataError, EmptySplitError
from ftjax.data.tasks import Task
from ftjax.data.types import RecordSource

MIXINGS = ("fixed", "proportional", "temperature")


class TrainSource(NamedTuple):
    """One source of the train mixture: its records, the task that makes them rows, and its
    weight (used with mixing="fixed")."""

    name: str
    records: RecordSource
    task: Task
    weight: float = 1.0


def mixture_weights(
    sources: Sequence[TrainSource],
    mixing: str = "fixed",
    temperature: float = 2.0,
) -> tuple[float, ...]:
    """The probability of each source in the mixture (they sum to 1); see the module doc."""
    if not sources:
        raise DataError("a train mixture needs at least one source")
    if mixing not in MIXINGS:
        raise DataError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
    if mixing == "fixed":
        raw = [float(source.weight) for source in sources]
        for source, weight in zip(sources, raw):
            if not (math.isfinite(weight) and weight > 0):
                raise DataError(f"source {source.name!r}: weight must be > 0, got {weight}")
    else:
        sizes = [num_records(source) for source in sources]
        if mixing == "proportional":
            raw = [float(n) for n in sizes]
        else:
            if not (math.isfinite(temperature) and temperature > 0):
                raise DataError(f"temperature must be > 0, got {temperature}")
            raw = [n ** (1.0 / temperature) for n in sizes]
    total = sum(raw)
    return tuple(w / total for w in raw)


def num_records(source: TrainSource) -> int:
    try:
        n = len(source.records)
    except TypeError:
        raise DataError(f"train records of source {source.name!r} must support len() and "
                        f"indexing, got {type(source.records).__name__}") from None
    if n == 0:
        raise EmptySplitError(f"train records are empty (source {source.name!r}: "
                              f"{source.records!r:.120})")
    return n


def check_compatible(sources: Sequence[TrainSource]) -> None:
    """Rows of every source must share feature names, shapes and dtypes (one batch holds rows
    of several sources), and all tasks must pack or none."""
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"source names must be distinct, got {repeated} more than once")
    first = sources[0]
    shapes = first.task.row_shapes()
    for other in sources[1:]:
        pair = f"sources {first.name!r} and {other.name!r}"
        if other.task.packed != first.task.packed:
            packer = first if first.task.packed else other
            raise DataError(f"{pair} cannot share batches: only {packer.name!r} packs documents "
                            f"into rows")
        other_shapes = other.task.row_shapes()
        for feature in sorted(shapes.keys() | other_shapes.keys()):
            if feature not in shapes or feature not in other_shapes:
                has = first if feature in shapes else other
                raise DataError(f"{pair} give rows of different features: only {has.name!r} "
                                f"has {feature!r}")
            if shapes[feature] != other_shapes[feature]:
                raise DataError(
                    f"{pair} give rows of different shapes: feature {feature!r} is "
                    f"{_describe(shapes[feature])} vs {_describe(other_shapes[feature])}")


def _describe(spec) -> str:
    shape, dtype = spec
    return f"{tuple(shape)} {dtype}"
