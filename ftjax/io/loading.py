"""Strictly fill a model's parameter tree from converted checkpoint tensors.

A format reader (GGUF, HF safetensors) turns a checkpoint into a `Conversion`: a flat mapping
from our "/"-joined parameter paths to arrays already in our layout, each remembering the
checkpoint key it came from. `fill_params` then checks that mapping against the model's own
tree (`param_shapes`, nothing allocated) and reports every problem in ONE error: model leaves
left unfilled, checkpoint tensors left unused, shapes or dtypes that disagree. Each line names the
checkpoint key and our path, so a user can find both in their file and in our tree.

A silently half-loaded model trains and evaluates without complaint and only looks "a bit worse";
that is why nothing here guesses, pads, or skips.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ftjax.models import Model, param_shapes
from ftjax.models.config import BackboneConfig
from ftjax.models.layout import to_layout

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, converted or loaded; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Converted:
    """One checkpoint tensor, converted to our layout.

    source: the checkpoint key as written in the file (what a user can search for).
    value: the array in our layout (kernels (in, out)), in the dtype it was stored in.
    stored_shape: its shape in the file, before any transpose or permutation.
    """

    source: str
    value: np.ndarray
    stored_shape: tuple[int, ...]


@dataclasses.dataclass
class Conversion:
    """What a format reader hands to `fill_params`.

    tensors: our path -> converted tensor.
    unmapped: checkpoint keys (with their stored shapes) that no naming rule recognizes.
    problems: anything else the reader found wrong (two keys for one parameter, ...).
    expected_key: our path -> the checkpoint key that would fill it (for "missing" messages).
    discardable: checkpoint keys that may go unused without an error (a pretraining head the
      caller chose to replace, a tied output matrix the config says to ignore); logged instead.
    """

    tensors: dict[str, Converted] = dataclasses.field(default_factory=dict)
    unmapped: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    expected_key: Callable[[str], str | None] = lambda path: None
    discardable: Callable[[str], bool] = lambda key: False


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read from disk: its architecture and its tensors, converted to our names.

    config: the architecture the file describes, with default policy fields.
    conversion: its tensors under our paths, for `fill_params`.
    """

    config: BackboneConfig
    conversion: Conversion


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def fill_params(model: Model, conversion: Conversion, *, where: str) -> dict[str, Any]:
    """Parameters of `model` taken from `conversion`, or one CheckpointError listing all problems.

    Every leaf is cast explicitly to the config's `param_dtype`. The result is a plain nested
    dict in the layout `model.config.scan_layers` asks for (checkpoints are always per-layer).
    """
    config = model.config
    per_layer = dataclasses.replace(model, config=config.with_policy(scan_layers=False))
    expected = flatten(param_shapes(per_layer))
    problems = list(conversion.problems)

    for path, spec in expected.items():
        if path not in conversion.tensors:
            key = conversion.expected_key(path)
            source = f"checkpoint key {key!r}" if key else "no checkpoint key maps to it"
            problems.append(
                f"missing: {source} -> our {path} {tuple(spec.shape)} is not in the file")

    dropped = []
    for path, tensor in conversion.tensors.items():
        if path not in expected:
            if conversion.discardable(tensor.source):
                dropped.append(tensor.source)
            else:
                problems.append(f"unused: checkpoint key {tensor.source!r} {tensor.stored_shape} "
                                f"would fill our {path}, which this model does not have")
            continue
        want = expected[path].shape
        if tuple(tensor.value.shape) != tuple(want):
            problems.append(
                f"shape: checkpoint key {tensor.source!r} stored as {tensor.stored_shape} "
                f"converts to {tuple(tensor.value.shape)}, but our {path} is {tuple(want)}")
        if not jnp.issubdtype(tensor.value.dtype, jnp.floating):  # bfloat16 counts, unlike np
            problems.append(f"dtype: checkpoint key {tensor.source!r} is {tensor.value.dtype}, "
                            f"not a floating-point type, so it cannot fill our {path}")

    for key, shape in conversion.unmapped.items():
        if conversion.discardable(key):
            dropped.append(key)
        else:
            problems.append(f"unused: checkpoint key {key!r} {shape} matches no parameter of a "
                            f"{config.arch} model")

    if problems:
        raise CheckpointError(
            f"{where}: cannot load into a {config.arch} model ({len(problems)} problem"
            f"{'s' * (len(problems) > 1)}):\n  " + "\n  ".join(problems))
    if dropped:
        logger.info("%s: not loaded (head or tied copy replaced by this model): %s", where,
                    ", ".join(sorted(dropped)))

    dtype = config.weight_dtype
    params = unflatten({path: _as_param(conversion.tensors[path].value, dtype)
                        for path in expected})
    return to_layout(params, scan_layers=config.scan_layers)


def _as_param(value, dtype):
    """A parameter leaf in `dtype`. A jax array (a loaded base reused under an adapter) stays on
    its device, and is the same array when it has the dtype already: no host round trip."""
    if isinstance(value, jax.Array):
        return value if value.dtype == dtype else value.astype(dtype)
    return jnp.asarray(np.asarray(value).astype(dtype, copy=False))
