"""Pure operations on {backbone, head} parameter dicts shared by every PEFT method.

A method's leaves are recognized by one regex over "/"-joined leaf paths (ftjax.peft.presets
holds them, one per method). Patterns are matched against the canonical per-layer path, so one
pattern serves both layouts (a stacked `.../layers/block/...` leaf is tested as layer 0's).
"""

from __future__ import annotations

import re
from typing import Any

_STACKED = re.compile(r"(^|/)layers/block(/|$)")


def canonical_module_path(module_path: str) -> str:
    """A scanned block's path (`.../layers/block/...`) as layer 0's per-layer path."""
    return _STACKED.sub(r"\1layers_0\2", module_path)


def split_leaves(params: dict, pattern: str) -> tuple[dict, dict]:
    """(rest, selected): the leaves whose path fullmatches `pattern`, and everything else.

    Empty branches are dropped from both: `selected` is the small tree to save, swap or insert,
    and `rest` of a tree that gained a method's modules is the tree it was before.
    """
    compiled = re.compile(pattern)

    def walk(tree: dict, prefix: str) -> tuple[dict, dict]:
        rest, selected = {}, {}
        for key, value in tree.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, dict):
                sub_rest, sub_selected = walk(value, path)
                if sub_rest or not value:  # a module that was all selected leaves goes whole
                    rest[key] = sub_rest
                if sub_selected:
                    selected[key] = sub_selected
            elif compiled.fullmatch(canonical_module_path(path)):
                selected[key] = value
            else:
                rest[key] = value
        return rest, selected

    return walk(params, "")


def insert_leaves(base: dict, extra: dict, *, new_branches: bool = True) -> dict:
    """Inverse of split_leaves: `base` with the leaves of `extra` put in (copies, never mutates).

    new_branches: whether `extra` may create modules the base lacks (an adapter module is new;
    a LoRA leaf always sits beside an existing kernel, so LoRA inserts refuse them: a missing
    branch there means the adapter belongs to another model).
    """
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict):
            if key not in out and not new_branches:
                raise KeyError(f"adapter leaf branch {key!r} has no counterpart in the base tree")
            if key in out and not isinstance(out[key], dict):
                raise KeyError(f"leaf branch {key!r} meets a leaf of the base tree")
            out[key] = insert_leaves(out.get(key, {}), value, new_branches=new_branches)
        else:
            out[key] = value
    return out


def leaf_paths(tree: Any) -> list[str]:
    """Sorted '/'-joined paths of every leaf of a nested dict."""
    found = []

    def walk(node: dict, prefix: str):
        for key, value in node.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(value, path)
            else:
                found.append(path)

    walk(tree, "")
    return sorted(found)
