"""Starting a run from another run's weights (two-stage fine-tuning, `init_from`).

The base run's parameters arrive merged into the pretrained architecture (LoRA and (IA)^3
folded in), so the new run attaches its own method to them exactly as to a pretrained model.
The backbone always comes from the base run; the task head does when `init_head = "keep"`,
and is otherwise the new one the config describes.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from ftjax.settings import ConfigError


def start_from(new_params: dict, base_params: dict, *, keep_head: bool, where: str) -> dict:
    """`new_params` (a freshly loaded model with the config's head) with the backbone, and
    with keep_head the head, of `base_params`; every taken leaf must match in shape."""
    parts = ("backbone", "head") if keep_head else ("backbone",)
    out = dict(new_params)
    for part in parts:
        if part not in base_params or part not in new_params:
            raise ConfigError(f"init_from {where}: the run has no {part} to start from"
                              if part not in base_params else
                              f"init_from {where}: this run's model has no {part}")
        _check_same_shapes(new_params[part], base_params[part], f"init_from {where}: {part}")
        out[part] = jax.tree.map(lambda new, base: np.asarray(base, dtype=new.dtype),
                                 new_params[part], base_params[part])
    return out


def _check_same_shapes(new, base, what: str) -> None:
    new_leaves = {k: np.shape(v) for k, v in traverse_util.flatten_dict(new, sep="/").items()}
    base_leaves = {k: np.shape(v) for k, v in traverse_util.flatten_dict(base, sep="/").items()}
    missing = sorted(set(new_leaves) - set(base_leaves))
    extra = sorted(set(base_leaves) - set(new_leaves))
    if missing or extra:
        raise ConfigError(f"{what} differs in structure (this run's model lacks {extra[:3]}, "
                          f"the base run lacks {missing[:3]}): is model.name the base run's?")
    for name, shape in new_leaves.items():
        if base_leaves[name] != shape:
            raise ConfigError(f"{what}/{name}: the base run has shape {base_leaves[name]}, this "
                              f"run {shape} (a head of another size needs init_head='new')")
