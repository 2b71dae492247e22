"""Folding prefix tuning's reparameterization MLP into plain per-layer prefixes."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from ftjax.models import param_shapes
from ftjax.utils.tree import insert_leaves, split_leaves


def fold_prefix(model, params: dict) -> tuple[Any, dict]:
    """Evaluate the reparameterization once: (model without it, params with per-layer leaves).

    The folded model computes the same function (up to float rounding of the MLP, which is now
    done once) with P x 2 x F parameters per layer and no MLP; use it for inference and export.
    """
    cfg = model.config.prefix
    if cfg is None or not cfg.projection:
        raise ValueError("fold_prefix needs a model whose config.prefix has projection=True")
    if "prefix_encoder" not in params.get("backbone", {}):
        raise ValueError("fold_prefix: params have no backbone/prefix_encoder to fold")
    k_LPF, v_LPF = model.apply({"params": params}, method=lambda m: m.backbone.prefix_encoder())
    values = {"k": np.asarray(k_LPF), "v": np.asarray(v_LPF)}
    folded_cfg = model.config.with_policy(prefix=dataclasses.replace(cfg, projection=False))
    folded = dataclasses.replace(model, config=folded_cfg)
    _, wanted = split_leaves(param_shapes(folded), r".*/prefix_(?:k|v)")

    def fill(tree: dict, path: str) -> dict:
        out = {}
        for key, leaf in tree.items():
            where = f"{path}/{key}"
            if isinstance(leaf, dict):
                out[key] = fill(leaf, where)
                continue
            stacked = values[key[-1]]
            layer = re.search(r"(?:^|/)layers_(\d+)/", where)
            value = stacked[int(layer.group(1))] if layer else stacked  # else: scan layout
            out[key] = jnp.asarray(value.reshape(leaf.shape), leaf.dtype)
        return out

    backbone = {k: v for k, v in params["backbone"].items() if k != "prefix_encoder"}
    return folded, insert_leaves({**params, "backbone": backbone}, fill(wanted, ""))
