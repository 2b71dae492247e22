"""Convert parameter trees between per-layer (`layers_N/...`) and scanned (`layers/block/...`).

The per-layer layout is canonical: checkpoints import and export through it and trainability
rules name layers by index. Scanned models (config.scan_layers) keep the same leaves stacked on a
leading "layers" axis; these two functions move between the layouts exactly.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def _layer_keys(tree: dict) -> list[str]:
    keys = sorted((k for k in tree if _LAYER_KEY.match(k)), key=lambda k: int(k.split("_")[1]))
    if [int(k.split("_")[1]) for k in keys] != list(range(len(keys))):
        raise ValueError(f"layer keys are not contiguous from 0: {keys}")
    return keys


def stack_layers(backbone: dict) -> dict:
    """Per-layer backbone params -> scanned layout (leaves stacked on axis 0)."""
    keys = _layer_keys(backbone)
    if not keys:
        raise ValueError("no layers_N entries to stack; is this tree already scanned?")
    rest = {k: v for k, v in backbone.items() if k not in keys}
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(backbone[k] for k in keys))
    return {**rest, "layers": {"block": stacked}}


def unstack_layers(backbone: dict) -> dict:
    """Scanned backbone params -> per-layer layout."""
    if "layers" not in backbone:
        raise ValueError("no stacked `layers` entry; is this tree already per-layer?")
    stacked = backbone["layers"]["block"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in backbone.items() if k != "layers"}
    return {**rest, **{f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)}}


def to_layout(params: dict, scan_layers: bool) -> dict:
    """Return `params` (the full {backbone, head} tree) in the layout a config asks for."""
    backbone = params["backbone"]
    is_scanned = "layers" in backbone
    if is_scanned == scan_layers:
        return params
    backbone = stack_layers(backbone) if scan_layers else unstack_layers(backbone)
    return {**params, "backbone": backbone}


def keep_layers(model, params: dict, layers) -> tuple:
    """(model, params) of a shallower copy: only the blocks `layers` (indices, in order), with
    their weights, renumbered from 0; embeddings, final norm and head kept. A layer-dropped
    student (DistilBERT-style initialization, e.g. every second layer)."""
    layers = tuple(int(i) for i in layers)
    total = model.config.num_layers
    if not layers:
        raise ValueError("keep_layers needs at least one layer")
    if sorted(set(layers)) != list(layers) or not all(0 <= i < total for i in layers):
        raise ValueError(f"keep_layers {list(layers)}: give increasing distinct indices in "
                         f"[0, {total}) (the model has {total} layers)")
    backbone = params["backbone"]
    if "layers" in backbone:
        index = jnp.asarray(layers)
        kept = {**backbone, "layers": jax.tree.map(lambda x: x[index], backbone["layers"])}
    else:
        rest = {k: v for k, v in backbone.items() if not _LAYER_KEY.match(k)}
        kept = {**rest, **{f"layers_{new}": backbone[f"layers_{old}"]
                           for new, old in enumerate(layers)}}
    config = model.config.with_policy(num_layers=len(layers))
    return model.clone(config=config), {**params, "backbone": kept}
