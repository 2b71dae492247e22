"""The scanned layer stack: one `nn.scan` over every layer, or two (config.scan_split).

Split at layer k, layers [0, k) are a scan of their own whose params are stacked apart
(`layers_below/...`, leading axis k) and [k, L) the usual `layers/...` (axis L - k). Nothing else
changes: the same block runs in the same order. What it is for: when the bottom layers are
frozen, their params enter the train step as constants, and jax's autodiff skips the whole
backward pass of a scan that depends on no trained value; with one scan over every layer it
runs through all of them and computes weight gradients that are then thrown away.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def layer_scans(block: type[nn.Module], cfg: Any, in_axes: tuple) -> tuple[Any, Any]:
    """(below, above): the nn.scan modules over layers [0, k) and [k, L) (below is None when
    the stack is not split). Assign them in `setup` as `layers_below` and `layers`."""
    split = cfg.scan_split
    if not 0 <= split < cfg.num_layers:
        raise ValueError(f"scan_split={split} must be in [0, num_layers={cfg.num_layers})")

    def scan(length: int):
        return nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=length,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)

    return (scan(split) if split else None), scan(cfg.num_layers - split)


def run_layers(below: Any, above: Any, split: int, x: jax.Array, xs: Any, *args) -> tuple:
    """Run the stack on carry `x`; `xs` (per-layer inputs, leading axis L, None allowed) is cut
    at the split and the per-layer outputs are joined again."""
    if below is None:
        return above(x, xs, *args)
    x, ys_below = below(x, jax.tree.map(lambda a: a[:split], xs), *args)
    x, ys_above = above(x, jax.tree.map(lambda a: a[split:], xs), *args)
    return x, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys_below, ys_above)
