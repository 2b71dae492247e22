"""Explicit penalties added to the loss: L1, L2 and L2-SP, over the trainable tree.

Unlike decoupled weight decay (in the optimizer), these go through the gradient, so they interact
with Adam's scaling and the clip norm; that is the point of L2-SP (Li et al. 2018): pull the
fine-tuned weights back toward the pretrained ones, in the loss.

All functions take the trainable half of `partition` (None at frozen positions, which they skip).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class RegularizerConfig:
    """Coefficients of the loss penalties (the `regularizer` config block; 0 = off).

    L2-SP (Li et al. 2018) pulls the leaves matching l2sp_include toward their pretrained values;
    trainable leaves outside it (a new head, which has no pretrained value) get the plain l2
    term instead, as in L2-SP's alpha/2 |w_S - w0|^2 + beta/2 |w_new|^2.
    """

    l1: float = setting(0.0, "coefficient of sum |w| over trainable leaves")
    l2: float = setting(0.0, "coefficient of (1/2) sum w^2 (only over leaves outside "
                        "l2sp_include when l2sp is on)")
    l2sp: float = setting(0.0, "coefficient of (1/2) sum (w - w0)^2, pulling toward the "
                          "pretrained weights w0")
    l2sp_include: str = setting(r"backbone/.*", "canonical paths (fullmatch) pulled toward "
                                "their pretrained values")

    @classmethod
    def from_config(cls, cfg: Any) -> "RegularizerConfig":
        return from_config(cls, cfg, "regularizer")

    @property
    def active(self) -> bool:
        """Whether any penalty is on (else make_regularizer gives None)."""
        return bool(self.l1 or self.l2 or self.l2sp)


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


@flax.struct.dataclass
class Regularizer:
    """penalty(trainable) -> scalar to add to the loss. A pytree: keep it in the train state so
    the anchor is an argument of the jitted step, not a constant baked into its program."""

    anchor: Any  # trainable-shaped; None where no L2-SP pull applies
    sp_weights: Any  # trainable-shaped: 1.0 where the pull applies, 0.0 not; (L,) when stacked
    l1: float = flax.struct.field(pytree_node=False, default=0.0)
    l2: float = flax.struct.field(pytree_node=False, default=0.0)
    l2sp: float = flax.struct.field(pytree_node=False, default=0.0)

    def __call__(self, trainable: Any) -> jax.Array:
        total = jnp.zeros([], jnp.float32)
        if self.l1:
            total += self.l1 * l1(trainable)
        if self.l2sp:
            # w0 where the pull applies; elsewhere (new leaves) a plain L2 with the l2 coefficient.
            def term(w, w0, sp):
                sp = sp.reshape(sp.shape + (1,) * (w.ndim - sp.ndim))  # along the layer axis
                pull = self.l2sp * sp * jnp.square(w - w0) if w0 is not None else 0.0
                plain = self.l2 * (1.0 - sp) * jnp.square(w) if self.l2 else 0.0
                return jnp.sum(0.5 * (pull + plain))

            terms = jax.tree.map(
                lambda w, w0, sp: None if w is None else term(w, w0, sp),
                trainable, self.anchor, self.sp_weights, is_leaf=_is_none,
            )
            total += _sum(terms, lambda x: x)
        elif self.l2:
            total += self.l2 * l2(trainable)
        return total


def make_regularizer(cfg: Any, anchor_params: Any, mask: Any = None) -> Regularizer | None:
    """The configured penalty, or None when every coefficient is 0.

    cfg: RegularizerConfig or a mapping / ConfigDict of its fields.
    anchor_params: the trainable half of `partition` at the start (the pretrained / initial
    weights). Anchor leaves are copied: the train state's params may be donated to the step.
    mask: the trainable_mask that partition used; it names the layers of partly trained stacked
    leaves (without it, stacked leaves are taken to hold every layer).
    """
    cfg = RegularizerConfig.from_config(cfg)
    if not cfg.active:
        return None
    flat, treedef = jax.tree_util.tree_flatten_with_path(anchor_params, is_leaf=_is_none)
    masks = [None] * len(flat) if mask is None else jax.tree.leaves(mask)
    if len(masks) != len(flat):
        raise ValueError(f"mask has {len(masks)} leaves, anchor_params {len(flat)} positions")
    weights, anchors = [], []
    for (key_path, leaf), layers in zip(flat, masks):
        if leaf is None:
            weights.append(None), anchors.append(None)
            continue
        w = _include_weights(path_str(key_path), leaf, cfg.l2sp_include, layers)
        weights.append(jnp.asarray(w))
        anchors.append(jnp.array(leaf, copy=True) if cfg.l2sp and np.any(w) else None)
    return Regularizer(
        anchor=jax.tree.unflatten(treedef, anchors),
        sp_weights=jax.tree.unflatten(treedef, weights),
        l1=cfg.l1, l2=cfg.l2, l2sp=cfg.l2sp,
    )
