"""Seeded splits of one list of records: train / validation / test by fractions, stratified by
label, and random subsets.

Split sizes depend only on the fractions (and the label counts), membership only on the seed:
every draw comes from ``numpy.random.default_rng(seed)``, so every machine and Python version
gets the same split.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ftjax.data.errors import DataError

Fractions = tuple[float, float, float]


def check_fractions(fractions: Sequence[float]) -> Fractions:
    """``fractions`` as 3 floats (train, validation, test), each >= 0, summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise DataError(f"fractions must be 3 non-negative numbers, got {tuple(fractions)}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"fractions must sum to 1, got {tuple(fractions)} (sum {sum(fractions)})")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def split_bounds(n: int, fractions: Fractions) -> list[tuple[int, int]]:
    """[start, stop) of train, validation and test in a permutation of ``n`` items."""
    n_train = round(fractions[0] * n)
    n_validation = min(round(fractions[1] * n), n - n_train)
    return [(0, n_train), (n_train, n_train + n_validation), (n_train + n_validation, n)]


def stratified_split(
    num_items: int,
    fractions: Sequence[float],
    seed: int,
    strata: Sequence[Hashable] | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Indices ``0..num_items-1`` split into train / validation / test, each list ascending.

    Each stratum (items of one ``strata`` value, e.g. one label; all items when None) is split
    on its own with the same fractions, so every split keeps the labels' proportions to within
    one item per label. Strata are taken in sorted order, each permuted by the one generator
    ``default_rng(seed)`` in turn.
    """
    fractions = check_fractions(fractions)
    if strata is None:
        strata = [0] * num_items
    elif len(strata) != num_items:
        raise DataError(f"{len(strata)} strata for {num_items} items")
    members: dict[Hashable, list[int]] = {}
    for index, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(index)
    rng = np.random.default_rng(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for stratum in sorted(members):
        indices = members[stratum]
        permuted = [indices[i] for i in rng.permutation(len(indices))]
        for part, (start, stop) in zip(parts, split_bounds(len(indices), fractions)):
            part.extend(permuted[start:stop])
    for part in parts:
        part.sort()
    return parts


def grouped_split(
    groups: Sequence[Hashable], fractions: Sequence[float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Indices of items split so that each group (items sharing a ``groups`` value: a book, a
    speaker, a document) lands whole in one split: the distinct groups, sorted, are permuted by
    ``default_rng(seed)`` and cut by ``fractions`` of their number. No item of a held-out
    group is ever trained on. Each list ascending."""
    fractions = check_fractions(fractions)
    distinct = sorted(set(groups))
    order = [distinct[i] for i in np.random.default_rng(seed).permutation(len(distinct))]
    role_of = {}
    for role, (start, stop) in enumerate(split_bounds(len(distinct), fractions)):
        role_of.update({group: role for group in order[start:stop]})
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for index, group in enumerate(groups):
        parts[role_of[group]].append(index)
    return parts


def subsample(records: Any, n: int, *, seed: int) -> list:
    """A random ``n`` of ``records`` (all of them if fewer), in their original order.

    Random rather than the first n: sources are often ordered by something that correlates
    with the label. Seeded, so every run with the same seed sees the same subset.
    """
    if n >= len(records):
        return [records[i] for i in range(len(records))]
    keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:n])
    return [records[int(i)] for i in keep]
