"""Several record sources in one train stream: the sources, how often each is drawn (the mixing
strategy), and the check that their rows can share a batch. ``pipeline.make_mixed_train_iterator``
builds the stream; ``ftjax.data.schedule`` draws the sources where a strategy needs draws.

Mixing strategies (``mixture_weights`` gives a strategy's probabilities, summing to 1; n_i is
source i's number of train records):

- "fixed": each source's own ``weight``;
- "proportional": n_i (every record equally likely, as if the sources were concatenated);
- "temperature": n_i ** (1 / temperature); temperature 1 is proportional, larger ones flatten
  the mixture towards uniform, so small sources are seen more often than their size says;
- "uniform": 1 for every source, whatever its size (temperature -> infinity);
- "annealed": n_i ** alpha(t), with alpha falling linearly from 1 at the stream's first
  example (t = 0: proportional) to 0 at example ``anneal_examples`` (uniform), and uniform
  after: alpha(t) = max(0, 1 - t / anneal_examples). This is the annealed sampling of
  Stickland & Murray 2019 ("BERT and PALs"), whose alpha = 1 - 0.8 (e - 1) / (E - 1) steps down
  once per epoch e of E and stops at 0.2; here it moves with every example and ends at
  uniform. t counts examples of the one global stream (all hosts, all sources); packed tasks
  mix rows, so there t counts rows; a per-source batch is drawn at its first example;
- "round_robin": the sources in turn (each gets 1 / k of the stream, exactly).

How the draws are made depends on the batching (``pipeline``): with mixed batches, rows of
several sources share a batch; fixed, proportional, temperature, uniform and round_robin
interleave the sources deterministically in their proportions (grain's ``mix``: uniform and
round_robin are then the same stream, the sources in turn), annealed draws the source of each
example at random (``schedule.SourceSchedule``). With per-source batches, every batch holds rows
of one source, drawn per global batch at random with the strategy's probabilities (round_robin:
in turn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ftjax.data.curriculum import Curriculum
from ftjax.data.errors import DataError, EmptySplitError
from ftjax.data.tasks import Task
from ftjax.data.types import RecordSource

MIXINGS = ("fixed", "proportional", "temperature", "uniform", "annealed", "round_robin")
# Strategies whose probabilities change along the stream (mixture_weights' `example`).
SCHEDULED_MIXINGS = ("annealed",)
# mixed: rows of several sources share a batch; per_source: each batch holds one source's rows.
BATCHINGS = ("mixed", "per_source")


class TrainSource(NamedTuple):
    """One source of the train mixture: its records, the task that makes them rows, its
    weight (used with mixing="fixed") and its curriculum, if any (the records' difficulty
    ranks and pacing: ftjax.data.curriculum orders its stream)."""

    name: str
    records: RecordSource
    task: Task
    weight: float = 1.0
    curriculum: Curriculum | None = None


def mixture_weights(
    sources: Sequence[TrainSource],
    mixing: str = "fixed",
    temperature: float = 2.0,
    *,
    example: int = 0,
    anneal_examples: int = 1,
) -> tuple[float, ...]:
    """The probability of each source in the mixture (they sum to 1); see the module doc.

    ``example`` and ``anneal_examples`` matter for "annealed" only: its probabilities at
    position ``example`` of the global stream (``annealed_weights``).
    """
    if not sources:
        raise DataError("a train mixture needs at least one source")
    if mixing not in MIXINGS:
        raise DataError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
    if mixing == "fixed":
        raw = [float(source.weight) for source in sources]
        for source, weight in zip(sources, raw):
            if not (math.isfinite(weight) and weight > 0):
                raise DataError(f"source {source.name!r}: weight must be > 0, got {weight}")
    elif mixing in ("uniform", "round_robin"):
        raw = [1.0 for _ in sources]
    else:
        sizes = [num_records(source) for source in sources]
        if mixing == "proportional":
            raw = [float(n) for n in sizes]
        elif mixing == "annealed":
            return tuple(float(p) for p in annealed_weights(sizes, [example], anneal_examples)[0])
        else:
            if not (math.isfinite(temperature) and temperature > 0):
                raise DataError(f"temperature must be > 0, got {temperature}")
            raw = [n ** (1.0 / temperature) for n in sizes]
    total = sum(raw)
    return tuple(w / total for w in raw)


def anneal_alpha(examples, anneal_examples: int) -> np.ndarray:
    """The exponent of annealed sampling at each of ``examples`` (positions in the global
    stream): 1 at 0, falling linearly to 0 at ``anneal_examples``, 0 after."""
    if anneal_examples < 1:
        raise DataError(f"anneal_examples must be >= 1, got {anneal_examples}")
    t = np.asarray(examples, dtype=np.float64)
    return np.clip(1.0 - t / anneal_examples, 0.0, 1.0)


def annealed_weights(sizes: Sequence[int], examples, anneal_examples: int) -> np.ndarray:
    """Annealed probabilities, one row per position of ``examples``: p_i(t) proportional to
    n_i ** alpha(t) (``anneal_alpha``), computed as (n_i / max n) ** alpha, which stays finite
    for any size."""
    alpha = anneal_alpha(examples, anneal_examples)
    log_sizes = np.log(np.asarray(sizes, dtype=np.float64))
    weights = np.exp(alpha[:, None] * (log_sizes - log_sizes.max())[None, :])  # in (0, 1]
    return weights / weights.sum(axis=1, keepdims=True)


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
