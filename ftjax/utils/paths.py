"""Parameter paths: "/"-joined names, the canonical per-layer view of stacked layers, groups.

Trainability rules address the *canonical* per-layer layout (`backbone/layers_3/mlp/...`), the one
checkpoints use. A scanned model stores the same leaves stacked on a leading layer axis under
`.../layers/block/...` (ftjax.models.layout); `canonical_layer_paths` names each slice of such a
leaf as the per-layer path it stands for, so one spec serves both layouts.
"""

from __future__ import annotations

import re
from typing import Any

import jax

# `<prefix>/layers/block/<rest>`: the scanned layout of ftjax.models.layout.
_STACKED = re.compile(r"^(?P<prefix>(?:.*/)?)layers/block/(?P<rest>.+)$")
_LAYER = re.compile(r"^(?:.*/)?layers_(?P<index>\d+)/")


def key_name(key: Any) -> str:
    """One path entry (DictKey, SequenceKey, GetAttrKey, ...) as a string."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(key_path: tuple) -> str:
    return "/".join(key_name(k) for k in key_path)


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    """(path, leaf) for every leaf, in jax.tree order (the order jax.tree.leaves uses)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p), leaf) for p, leaf in flat]


def is_stacked(path: str) -> bool:
    return _STACKED.match(path) is not None


def canonical_layer_paths(path: str, num_layers: int) -> list[str]:
    """The per-layer paths of the slices of a stacked leaf, layer 0 first."""
    m = _STACKED.match(path)
    if m is None:
        raise ValueError(f"{path!r} is not a stacked (scan layout) path")
    return [f"{m['prefix']}layers_{i}/{m['rest']}" for i in range(num_layers)]


def layer_index(path: str) -> int | None:
    """The layer a canonical path belongs to, or None outside the layer blocks."""
    m = _LAYER.match(path)
    return int(m["index"]) if m else None


def layer_runs(indices: tuple[int, ...], breaks: tuple[int, ...]) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive layer `indices` (ascending), also cut at
    `breaks`: [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i and i not in breaks:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def group_of(path: str) -> str:
    """A coarse component name for counting and logging, from a canonical path.

    "embeddings", "layers_<i>", "head", or the first key under the backbone ("norm", "pooler").
    """
    parts = path.split("/")
    if parts[0] != "backbone" or len(parts) < 2:
        return parts[0]
    index = layer_index(path)
    if index is not None:
        return f"layers_{index}"
    if parts[1] in ("embed_tokens", "embeddings"):
        return "embeddings"
    return parts[1]


def group_order(group: str) -> tuple:
    """Sort groups input-to-output: embeddings, layers by index, the rest, head."""
    if group == "embeddings":
        return (0, 0, group)
    m = re.fullmatch(r"layers_(\d+)", group)
    if m:
        return (1, int(m[1]), group)
    if group == "head":
        return (3, 0, group)
    return (2, 0, group)
