"""Explicit penalties on the trainable parameters: the `l1`, `l2` and `l2_sp` terms.

Unlike decoupled weight decay (in the optimizer), these go through the gradient, so they interact
with Adam's scaling and the clip norm; that is the point of L2-SP (Li et al. 2018): pull the
fine-tuned weights back toward the pretrained ones, in the loss. Each is a per-step term whose
weight is its coefficient:

    l1     sum |w|                       over the trainable leaves
    l2     (1/2) sum w^2                 over the trainable leaves, except `exclude`
    l2_sp  (1/2) sum (w - w0)^2          over the trainable leaves matching `include`, toward
                                         their values w0 when the run starts (an anchor copy,
                                         a constant of the term)

The `regularizer` config block is shorthand for them: l2sp > 0 with l2 > 0 is L2-SP's
alpha/2 |w_S - w0|^2 + beta/2 |w_new|^2, the plain L2 then applying to the trainable leaves
outside `l2sp_include` only (a new head has no pretrained value to pull toward).

Paths are canonical per-layer paths; for a stacked (scanned) leaf the match is per layer, and a
partly trained stack holds only its trained layers (ftjax.optim.trainability.TrainedLayers).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.objectives.term import (
    LossTerm,
    TermConfig,
    TermContext,
    TermSetup,
    TermValue,
)
from ftjax.optim.rules import uniform_as_scalar
from ftjax.optim.trainability import TrainedLayers
from ftjax.settings import from_config, setting
from ftjax.utils.paths import canonical_layer_paths, is_stacked, path_str

_is_none = lambda x: x is None  # noqa: E731


def _sum(tree: Any, f) -> jax.Array:
    terms = [jnp.sum(f(x).astype(jnp.float32)) for x in jax.tree.leaves(tree) if x is not None]
    return sum(terms, jnp.zeros([], jnp.float32))


def l1(params: Any) -> jax.Array:
    """sum |w|: gradient sign(w), a constant-size pull toward zero (sparsity)."""
    return _sum(params, jnp.abs)


def l2(params: Any) -> jax.Array:
    """(1/2) sum w^2: gradient w (coupled weight decay)."""
    return 0.5 * _sum(params, jnp.square)


def l2sp(params: Any, anchor: Any) -> jax.Array:
    """(1/2) sum (w - w0)^2 over the leaves where `anchor` holds w0 (None: skipped).

    Gradient w - w0: a pull toward the anchor (the pretrained weights); plain l2 for w0 = 0.
    """
    diffs = jax.tree.map(
        lambda w, w0: None if w is None or w0 is None else w - w0, params, anchor, is_leaf=_is_none
    )
    return 0.5 * _sum(diffs, jnp.square)


def _weighted(params: Any, weights: Any, f) -> jax.Array:
    """sum f(w) * weight, the weight per leaf or (L,) per layer of a stacked leaf."""
    def one(w, s):
        if w is None or s is None:
            return None
        s = s.reshape(s.shape + (1,) * (w.ndim - s.ndim))  # along the layer axis
        return jnp.sum(s * f(w))

    return _sum(jax.tree.map(one, params, weights, is_leaf=_is_none), lambda x: x)


def _include_weights(path: str, leaf: Any, pattern: str, layers: Any) -> np.ndarray:
    """1.0 / 0.0 per slice (per layer for stacked leaves) by whether the canonical path matches.

    layers: the leaf's trainable-mask entry; a TrainedLayers says which layers the (partly
    trained, split) stacked leaf holds."""
    paths = [path]
    if is_stacked(path) and leaf.ndim:
        if isinstance(layers, TrainedLayers):
            every = canonical_layer_paths(path, layers.num_layers)
            paths = [every[i] for i in layers.indices]
        else:
            paths = canonical_layer_paths(path, leaf.shape[0])
    w = np.asarray([bool(re.fullmatch(pattern, p)) for p in paths], np.float32)
    return uniform_as_scalar(w)


def path_weights(trainable: Any, mask: Any, pattern: str, *, invert: bool = False) -> Any:
    """Per trainable leaf, 1.0 where its canonical path fullmatches `pattern` (per layer for a
    stacked leaf), 0.0 elsewhere; `invert` swaps them. None at frozen positions."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(trainable, is_leaf=_is_none)
    masks = [None] * len(flat) if mask is None else jax.tree.leaves(mask)
    if len(masks) != len(flat):
        raise ValueError(f"mask has {len(masks)} leaves, the trainable tree {len(flat)} "
                         f"positions")
    out = []
    for (key_path, leaf), layers in zip(flat, masks):
        if leaf is None:
            out.append(None)
            continue
        w = _include_weights(path_str(key_path), leaf, pattern, layers)
        out.append(jnp.asarray(1.0 - w if invert else w))
    return jax.tree.unflatten(treedef, out)


class L1(LossTerm):
    """sum |w| over the trainable leaves."""

    per_example = False

    def __call__(self, ctx: TermContext) -> TermValue:
        return TermValue(total=l1(ctx.trainable))


@dataclasses.dataclass(frozen=True)
class L2Config(TermConfig):
    exclude: str | None = setting(None, "canonical paths (fullmatch) left out of the penalty")


class L2(LossTerm):
    """(1/2) sum w^2 over the trainable leaves, except those matching `exclude`."""

    Config = L2Config
    per_example = False

    def constants(self, setup: TermSetup) -> Any:
        if self.config.exclude is None:
            return None
        weights = path_weights(setup.trainable, setup.mask, self.config.exclude, invert=True)
        return setup.place_replicated(weights)

    def __call__(self, ctx: TermContext) -> TermValue:
        if ctx.constants is None:
            return TermValue(total=l2(ctx.trainable))
        return TermValue(total=0.5 * _weighted(ctx.trainable, ctx.constants, jnp.square))


@dataclasses.dataclass(frozen=True)
class L2SPConfig(TermConfig):
    include: str = setting(r"backbone/.*", "canonical paths (fullmatch) pulled toward their "
                           "values at the start of the run")


class L2SP(LossTerm):
    """(1/2) sum (w - w0)^2 toward the run's starting weights, over the leaves of `include`."""

    Config = L2SPConfig
    per_example = False

    def constants(self, setup: TermSetup) -> Any:
        weights = path_weights(setup.trainable, setup.mask, self.config.include)
        anchor = jax.tree.map(
            lambda w, s: None if w is None or not np.any(np.asarray(s)) else w,
            setup.trainable, weights, is_leaf=_is_none)
        return {"anchor": setup.place_like_trainable(anchor),
                "weights": setup.place_replicated(weights)}

    def __call__(self, ctx: TermContext) -> TermValue:
        anchor, weights = ctx.constants["anchor"], ctx.constants["weights"]
        diffs = jax.tree.map(lambda w, w0: None if w is None or w0 is None else w - w0,
                             ctx.trainable, anchor, is_leaf=_is_none)
        return TermValue(total=0.5 * _weighted(diffs, weights, jnp.square))


@dataclasses.dataclass(frozen=True)
class RegularizerConfig:
    """Shorthand for the penalty terms (the `regularizer` config block; 0 = off): each
    coefficient becomes the weight of its term (l1, l2, l2_sp)."""

    l1: float = setting(0.0, "coefficient of sum |w| over trainable leaves")
    l2: float = setting(0.0, "coefficient of (1/2) sum w^2 (only over leaves outside "
                        "l2sp_include when l2sp is on)")
    l2sp: float = setting(0.0, "coefficient of (1/2) sum (w - w0)^2, pulling toward the "
                          "pretrained weights w0")
    l2sp_include: str = setting(r"backbone/.*", "canonical paths (fullmatch) pulled toward "
                                "their pretrained values")

    def __post_init__(self):
        for key in ("l1", "l2", "l2sp"):
            value = getattr(self, key)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {value}")

    @classmethod
    def from_config(cls, cfg: Any) -> "RegularizerConfig":
        return from_config(cls, cfg, "regularizer")

    def terms(self) -> list[LossTerm]:
        """The penalty terms these coefficients switch on."""
        out: list[LossTerm] = []
        if self.l1:
            out.append(L1("l1", TermConfig(weight=self.l1)))
        if self.l2:
            exclude = self.l2sp_include if self.l2sp else None
            out.append(L2("l2", L2Config(weight=self.l2, exclude=exclude)))
        if self.l2sp:
            out.append(L2SP("l2_sp", L2SPConfig(weight=self.l2sp, include=self.l2sp_include)))
        return out
