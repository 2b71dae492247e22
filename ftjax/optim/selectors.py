"""Regexes that select layers, for writing trainability specs.

They match canonical per-layer paths (`backbone/layers_N/...`), so they serve both layouts
(ftjax.optim.rules resolves a stacked leaf per layer). Architecture components (attention, MLP,
norms, ...) are named by the models: ftjax.models.components.

    layers(top(2, 30))  -> backbone/layers_(?:28|29)/.*
"""

from __future__ import annotations

from typing import Iterable

# Matches nothing: a component an architecture lacks still yields a valid (unused) rule.
NOTHING = r"(?!)"


def layer_alternation(indices: Iterable[int]) -> str:
    """`(?:0|3|5)` for layer indices; NOTHING-like empty group when there are none."""
    indices = sorted(set(int(i) for i in indices))
    if any(i < 0 for i in indices):
        raise ValueError(f"layer indices must be >= 0, got {indices}")
    return "(?:" + "|".join(str(i) for i in indices) + ")" if indices else NOTHING


def layers(indices: Iterable[int]) -> str:
    """Every parameter of the given blocks."""
    return f"backbone/layers_{layer_alternation(indices)}/.*"


def layer_range(start: int, stop: int) -> list[int]:
    """Block indices start..stop-1 (Python range semantics)."""
    return list(range(start, stop))


def top(k: int, num_layers: int) -> list[int]:
    """The last k blocks (closest to the head)."""
    _check_k(k, num_layers)
    return list(range(num_layers - k, num_layers))


def bottom(k: int, num_layers: int) -> list[int]:
    """The first k blocks (closest to the embeddings)."""
    _check_k(k, num_layers)
    return list(range(k))


def _check_k(k: int, num_layers: int) -> None:
    if not 0 <= k <= num_layers:
        raise ValueError(f"k={k} blocks requested of a model with {num_layers}")
