"""The model's forward pass as the steps run it: the scan-split view of the parameters and the
model's keyword arguments from a batch (ftjax.objectives.inputs)."""

from __future__ import annotations

import jax

from ftjax.nn.scan import segment_bounds
from ftjax.objectives.inputs import model_inputs
from ftjax.optim.trainability import LayerSplit, combine, scan_breaks


def _segment_of(t, f, start: int, stop: int):
    """Layers [start, stop) of one stacked leaf from its trainable (`t`) and frozen (`f`) halves:
    a slice of its trained layers, or its frozen run of them (LayerSplit cut them to fit). With
    a stack partly trained, partition makes every frozen stacked leaf a LayerSplit, so a leaf
    without one trains whole."""
    if not isinstance(f, LayerSplit):
        return t[start:stop]
    if start not in f.layers.indices:
        return f.run(start, stop)
    at = f.layers.indices.index(start)
    return t[at:at + stop - start]


def scan_split_view(model, trainable, frozen):
    """(model, params) for the train and eval steps' forward pass.

    Usually `model` and combine(trainable, frozen). When stacks of a scanned model are split
    between the halves (some of their layers train, ftjax.optim.trainability), instead the model
    with config.scan_breaks where training starts and stops along the layers, and params stacked
    per segment (`layer_segments_<i>`, see ftjax.nn.scan): frozen layers as the frozen half
    stores them (runs cut to fit, no copy), trained ones sliced from the trainable half. The
    same function, but autodiff computes no weight gradient for a frozen segment (and no
    backward pass at all below the lowest trained value), where one scan over the combined
    stack computes them for every layer; and no step makes a restacked copy of the stack.
    """
    is_split = lambda x: isinstance(x, LayerSplit)  # noqa: E731
    breaks = scan_breaks(x.layers for x in jax.tree.leaves(frozen, is_leaf=is_split)
                         if is_split(x)) if model.config.scan_layers else ()
    if not breaks:
        return model, combine(trainable, frozen)
    if model.adapter_slots is not None:
        raise ValueError("adapters per task train whole: a scanned stack whose layers are "
                         "partly trained has no slot axis to split")

    t_stack, f_stack = trainable["backbone"]["layers"], frozen["backbone"]["layers"]
    num_layers = model.config.num_layers
    segments = {
        f"layer_segments_{i}": jax.tree.map(
            lambda t, f, a=start, b=stop: _segment_of(t, f, a, b), t_stack, f_stack,
            is_leaf=lambda x: x is None or is_split(x))
        for i, (start, stop) in enumerate(segment_bounds(breaks, num_layers))}
    without_stack = lambda tree: {**tree, "backbone": {  # noqa: E731
        k: v for k, v in tree["backbone"].items() if k != "layers"}}
    params = combine(without_stack(trainable), without_stack(frozen))
    params["backbone"] = {**params["backbone"], **segments}
    return model.clone(config=model.config.with_policy(scan_breaks=breaks)), params


__all__ = ["model_inputs", "scan_split_view"]
