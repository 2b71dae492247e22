"""What trains and what it costs: parameter counts per group and rule, optimizer-state bytes.

Works on arrays or on jax.ShapeDtypeStruct trees (`param_shapes`, `jax.eval_shape(tx.init, ...)`),
so the report for a large model needs no memory. The dict is JSON-serializable as is (the train
loop writes it to WORKDIR/params_report.json).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from ftjax.optim.rules import ResolvedRule, Rule, is_rule, rule_slices
from ftjax.utils.paths import group_of, group_order, layer_index, layer_runs, leaf_paths


def _size(leaf: Any) -> int:
    return int(math.prod(leaf.shape))


def _nbytes(leaf: Any) -> int:
    return _size(leaf) * np.dtype(leaf.dtype).itemsize


def _slices(path: str, leaf: Any, rule: ResolvedRule) -> list[tuple[str, int, Rule]]:
    """(canonical path, element count, rule) per layer slice of a stacked leaf, else one entry."""
    slices = rule_slices(path, rule)
    per_slice = _size(leaf) // len(slices)
    return [(p, per_slice, r) for p, r in slices]


def state_bytes(tree: Any) -> int:
    """Bytes of every array (or ShapeDtypeStruct) leaf of a tree, e.g. an optimizer state."""
    return sum(_nbytes(x) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))


def report(params: Any, resolved: Any, opt_state: Any = None) -> dict:
    """Counts of all and trainable parameters, overall, per group and per rule.

    "trainable" counts elements that train at some step (gradual unfreezing included); for a
    stacked leaf only its trainable layer slices count (partition splits the others out).
    "scanned_frozen_layers": the frozen layers of stacks that partly train; they hold no
    optimizer state, and the train step computes no weight gradient for them (it cuts the scan
    where trained and frozen layers meet, ftjax.train.step.scan_split_view).
    `optimizer_state_bytes` is None unless an optimizer state (arrays or shapes) is given.
    """
    rules = jax.tree.leaves(resolved, is_leaf=is_rule)
    entries = leaf_paths(params)
    if len(rules) != len(entries):
        raise ValueError(f"resolved rules ({len(rules)}) do not match params ({len(entries)})")
    groups: dict[str, dict[str, int]] = {}
    by_rule: dict[str, dict[str, int]] = {}
    total = trainable = 0
    param_bytes = trainable_bytes = 0
    scanned_frozen: set[int] = set()
    for (path, leaf), rule in zip(entries, rules):
        itemsize = np.dtype(leaf.dtype).itemsize
        for canonical, size, slice_rule in _slices(path, leaf, rule):
            trained = size if slice_rule.trains else 0
            total += size
            trainable += trained
            param_bytes += size * itemsize
            trainable_bytes += trained * itemsize
            if rule.trains and not slice_rule.trains:
                scanned_frozen.add(layer_index(canonical))
            for table, key in ((groups, group_of(canonical)), (by_rule, slice_rule.describe())):
                row = table.setdefault(key, {"total": 0, "trainable": 0})
                row["total"] += size
                row["trainable"] += trained
    return {
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "trainable_share": trainable / total if total else 0.0,
        "param_bytes": param_bytes,
        "trainable_bytes": trainable_bytes,
        "scanned_frozen_layers": sorted(scanned_frozen),
        "optimizer_state_bytes": None if opt_state is None else state_bytes(opt_state),
        "groups": {g: groups[g] for g in sorted(groups, key=group_order)},
        "by_rule": by_rule,
    }


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    return ", ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in layer_runs(indices, ()))


def format_report(rep: dict) -> str:
    """A fixed-width table of `report(...)`: one row per group, then totals and costs."""
    rows = [(g, r["total"], r["trainable"]) for g, r in rep["groups"].items()]
    rows.append(("total", rep["total"], rep["trainable"]))
    width = max(12, *(len(name) for name, _, _ in rows))
    header = f"{'group':<{width}} {'params':>13} {'trainable':>13} {'share':>7}"
    lines = [header, "-" * len(header)]
    for i, (name, n, t) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(header))
        share = f"{100 * t / n:.1f}%" if n else "-"
        lines.append(f"{name:<{width}} {n:>13,} {t:>13,} {share:>7}")
    lines.append("")
    for desc, r in rep["by_rule"].items():
        lines.append(f"rule {desc}: {r['total']:,} params")
    lines.append(f"trainable share: {100 * rep['trainable_share']:.4f}% "
                 f"({_human_bytes(rep['trainable_bytes'])} of {_human_bytes(rep['param_bytes'])})")
    if rep.get("scanned_frozen_layers"):
        lines.append(f"frozen inside partly trained scanned stacks: layers "
                     f"{_ranges(rep['scanned_frozen_layers'])} (no optimizer state, no weight "
                     f"gradient)")
    if rep.get("optimizer_state_bytes") is not None:
        lines.append(f"optimizer state: {_human_bytes(rep['optimizer_state_bytes'])}")
    return "\n".join(lines)
