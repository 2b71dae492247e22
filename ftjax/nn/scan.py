"""The scanned layer stack: one `nn.scan` over every layer, or one per segment (config.scan_breaks).

With breaks (b1, b2, ...) the layers run as scans over [0, b1), [b1, b2), ..., [bn, L), whose
params are stacked apart (`layer_segments_<i>/...`, leading axis the segment's length) instead of
under `layers/...`. Nothing else changes: the same block runs in the same order. What it is for:
jax's autodiff of a scan computes the cotangent of every per-layer input it is given, so one scan
over a stack of which only some layers train computes the weight gradients of all of them and
throws most away. Cut where training starts or stops, a segment whose layers are all frozen gets
its params as constants: its backward pass computes only the activations' cotangent (or nothing
at all, when no trained value lies below it). The train step picks the breaks
(ftjax.train.step.scan_split_view).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


# The collection blocks sow their outputs into (each block's output hidden states, "hidden"):
# empty unless a caller applies the model with mutable=[INTERMEDIATES] (a distillation term).
INTERMEDIATES = "intermediates"


def segment_bounds(breaks: tuple[int, ...], num_layers: int) -> list[tuple[int, int]]:
    """[(start, stop)] of each scan, checking that the breaks cut the stack in order."""
    edges = (0, *breaks, num_layers)
    if any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"scan_breaks={breaks} must increase strictly within "
                         f"(0, num_layers={num_layers})")
    return list(zip(edges, edges[1:]))


def attach_layer_scans(module: nn.Module, block: type[nn.Module], cfg: Any,
                       in_axes: tuple) -> None:
    """From a module's `setup`: its scans over the layers, as `module.layers` (one) or
    `module.layer_segments` (several; params `layer_segments_<i>`)."""
    def scan(length: int):
        return nn.scan(
            block,
            variable_axes={"params": 0, INTERMEDIATES: 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            length=length,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)

    bounds = segment_bounds(cfg.scan_breaks, cfg.num_layers)
    if len(bounds) == 1:
        module.layers = scan(cfg.num_layers)
    else:
        module.layer_segments = [scan(stop - start) for start, stop in bounds]


def run_layers(module: nn.Module, x: jax.Array, xs: Any, *args) -> tuple:
    """Run the scans `attach_layer_scans` made on carry `x`; `xs` (per-layer inputs, leading axis
    L, None allowed) is cut at the breaks and the per-layer outputs are joined again."""
    cfg = module.config
    if not cfg.scan_breaks:
        return module.layers(x, xs, *args)
    outputs = []
    for scan, (start, stop) in zip(module.layer_segments,
                                   segment_bounds(cfg.scan_breaks, cfg.num_layers)):
        x, ys = scan(x, jax.tree.map(lambda a, s=start, e=stop: a[s:e], xs), *args)
        outputs.append(ys)
    return x, jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs)
