"""The optimizer a trainability spec implies (DESIGN.md decisions 3 and 4).

    tx = make_optimizer(opt_cfg, resolved, trainable, total_steps)
    opt_state = tx.init(trainable)                     # no entry for frozen leaves
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)

The chain, applied to the trainable tree (None at frozen positions):
  1. zero the gradients of slices not yet unfrozen (so they do not count in the clip norm),
  2. clip by global norm over the trainable leaves,
  3. the optimizer's moments (adam / lion / momentum / factored rms), each slice starting at its
     unfreeze step,
  4. decoupled weight decay, coefficient weight_decay * Rule.wd, none on `no_decay` leaves,
  5. scale by -schedule(step) * Rule.lr; slices not yet unfrozen get an exact no-op.
Freezing never uses optax's masked wrapper: frozen leaves are simply absent from the trainable tree.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
import optax

from ftjax.optim.config import OptimizerConfig
from ftjax.optim.rules import (
    NEVER,
    ResolvedRule,
    is_rule,
    lr_multiplier,
    rule_slices,
    start_step,
    uniform_as_scalar,
    wd_multiplier,
)
from ftjax.optim.schedules import Schedule, learning_rate_fn
from ftjax.optim.trainability import TrainedLayers, leaf_mask, take_layers
from ftjax.optim.transforms import (
    LearningRateState,
    add_decayed_weights_per_leaf,
    momentum_from,
    scale_by_adam_from,
    scale_by_learning_rate_per_leaf,
    scale_by_lion_from,
    zero_inactive_grads,
)
from ftjax.utils.paths import group_of, group_order, path_str


def _rules_with_paths(resolved: Any) -> list[tuple[str, ResolvedRule]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(resolved, is_leaf=is_rule)
    return [(path_str(p), r) for p, r in flat]


def decays(path: str, no_decay: tuple[str, ...]) -> bool:
    """Whether weight decay applies to a canonical path (no `no_decay` pattern fullmatches it)."""
    return not any(re.fullmatch(p, path) for p in no_decay)


def _wd_coefficient(path: str, rule: ResolvedRule, cfg: OptimizerConfig) -> np.ndarray:
    """weight_decay * Rule.wd per slice, 0 where a no_decay pattern matches the slice's path."""
    mask = np.asarray([decays(p, cfg.no_decay) for p, _ in rule_slices(path, rule)], np.float32)
    coeff = cfg.weight_decay * wd_multiplier(rule) * (mask if mask.size > 1 else mask[0])
    coeff = np.asarray(coeff, np.float32)
    return uniform_as_scalar(coeff)


def _trained_layers(values: np.ndarray, layers: bool | TrainedLayers) -> np.ndarray:
    """Per-layer constants (L,) cut to the layers the trainable tree holds; a scalar as is."""
    if not isinstance(layers, TrainedLayers) or values.ndim == 0:
        return values
    return uniform_as_scalar(take_layers(values, layers.indices))


def leaf_constants(opt_cfg: OptimizerConfig, resolved: Any, trainable_params: Any):
    """(lr multipliers, weight-decay coefficients, start steps): numpy trees shaped like the
    trainable tree, None at its None (frozen) positions."""
    cfg = OptimizerConfig.from_config(opt_cfg)
    rules = _rules_with_paths(resolved)
    leaves, treedef = jax.tree.flatten(trainable_params, is_leaf=lambda x: x is None)
    if len(leaves) != len(rules):
        raise ValueError(
            f"trainable tree has {len(leaves)} leaf positions but the resolved spec has "
            f"{len(rules)}; pass the `trainable` half of partition(params, ...) of the same params"
        )
    lrs, wds, starts = [], [], []
    for leaf, (path, rule) in zip(leaves, rules):
        if leaf is None:  # frozen: no constants, as no state and no update
            for out in (lrs, wds, starts):
                out.append(None)
            continue
        if not rule.trains:
            raise ValueError(f"{path} is in the trainable tree but its rule freezes it")
        # A partly trained stacked leaf is in the trainable tree as its trained layers only.
        layers = leaf_mask(rule)
        lrs.append(_trained_layers(lr_multiplier(rule), layers))
        wds.append(_trained_layers(_wd_coefficient(path, rule, cfg), layers))
        starts.append(_trained_layers(start_step(rule), layers))
    unflatten = lambda xs: jax.tree.unflatten(treedef, xs)  # noqa: E731
    return unflatten(lrs), unflatten(wds), unflatten(starts)


def _moments(cfg: OptimizerConfig, starts: Any) -> optax.GradientTransformation:
    b1, b2 = cfg.betas
    if cfg.name == "adamw":
        return scale_by_adam_from(starts, b1, b2, cfg.eps)
    if cfg.name == "lion":
        return scale_by_lion_from(starts, b1, b2)
    if cfg.name == "sgd":
        if cfg.momentum:
            return momentum_from(starts, cfg.momentum, cfg.nesterov)
        return optax.identity()
    # adafactor: optax's factored second moment, then its usual update clipping (RMS <= 1).
    # Its statistics are not restarted per slice at unfreezing (the factored state is not
    # param-shaped); gradients are zero before the start, and the RMS clip bounds the first
    # updates after it.
    parts = [optax.scale_by_factored_rms(decay_rate=b2, epsilon=1e-30),
             optax.clip_by_block_rms(1.0)]
    if b1:
        parts.append(momentum_from(starts, b1, nesterov=False))
    return optax.chain(*parts)


def make_optimizer(
    opt_cfg: Any, resolved: Any, trainable_params: Any, total_steps: int
) -> optax.GradientTransformation:
    """The optax chain for the trainable tree (see the module docstring for its order).

    opt_cfg: OptimizerConfig, or a ConfigDict / mapping of its fields (cfg.optimizer).
    resolved: resolve(spec, params). trainable_params: partition(params, mask)[0] (arrays or
    ShapeDtypeStructs: only its structure is read here). total_steps: optimizer steps of the run
    (the default decay horizon).
    """
    cfg = OptimizerConfig.from_config(opt_cfg)
    lrs, wds, starts = leaf_constants(cfg, resolved, trainable_params)
    if not [s for s in jax.tree.leaves(starts) if s is not None]:
        raise ValueError(
            "no parameter trains under this spec (e.g. a linear probe of a tied LM head, which "
            "has no head/ parameters); check the spec with trainability.report"
        )
    gated = any(s is not None and np.any(s != 0) for s in jax.tree.leaves(starts))
    parts = []
    if gated:
        parts.append(zero_inactive_grads(starts))
    if cfg.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(_moments(cfg, starts))
    if cfg.weight_decay:
        parts.append(add_decayed_weights_per_leaf(wds))
    parts.append(scale_by_learning_rate_per_leaf(learning_rate_fn(cfg, total_steps), lrs, starts))
    return optax.chain(*parts)


def optimizer_step(opt_state: Any) -> jax.Array:
    """The step the learning-rate schedule uses (updates applied so far), from a make_optimizer
    state (also inside optax.MultiSteps or any wrapper that keeps the inner state)."""
    is_lr_state = lambda x: isinstance(x, LearningRateState)  # noqa: E731
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_lr_state) if is_lr_state(s)]
    if len(found) != 1:
        raise ValueError(f"expected one make_optimizer state inside opt_state, found {len(found)}")
    return found[0].count


def unfreeze_steps(resolved: Any) -> list[int]:
    """The steps at which some slice starts training (after step 0), ascending."""
    return sorted({r.start_step for path, rule in _rules_with_paths(resolved)
                   for _, r in rule_slices(path, rule)
                   if r.trains and 0 < r.start_step != NEVER})


def effective_lrs(step_or_state: Any, resolved: Any, schedule: Schedule) -> dict[str, float]:
    """Learning rate each group trains with at a step: schedule(step) * Rule.lr, 0 before a
    slice unfreezes. Per group (paths.group_of: embeddings, layers_<i>, norm, pooler, head) the
    largest over its slices; groups with nothing trainable are left out. Host-side, for logging.

    step_or_state: an int / scalar array step, or the optimizer state (see optimizer_step).
    """
    is_step = isinstance(step_or_state, (int, np.integer)) or (
        hasattr(step_or_state, "shape") and step_or_state.shape == ()
    )
    step = int(step_or_state if is_step else optimizer_step(step_or_state))
    base = float(schedule(step))
    out: dict[str, float] = {}
    for path, rule in _rules_with_paths(resolved):
        for canonical, r in rule_slices(path, rule):
            if not r.trains:
                continue
            group = group_of(canonical)
            lr = base * r.lr if step >= r.start_step and r.start_step != NEVER else 0.0
            out[group] = max(out.get(group, 0.0), lr)
    return {g: out[g] for g in sorted(out, key=group_order)}
