"""Elastic weight consolidation (Kirkpatrick et al. 2017): keep the weights that mattered for
earlier tasks near their values, each in proportion to its Fisher information,

    (1/2) sum_k F_k (theta_k - theta*_k)^2,

theta* the run's starting weights (a continual stage starts from the previous stage's final
weights through `init_from`) and F the diagonal in a Fisher file (`ftjax fisher WORKDIR`,
ftjax.train.fisher). With a running Fisher file (each estimate adding the decayed earlier one)
this is online EWC (Schwarz et al. 2018); decay 1 sums every earlier task's Fisher at the latest
anchor (Huszar 2018).

The Fisher and the anchor are the term's state: read when the run starts and saved with every
checkpoint, so a resumed stage continues with the Fisher it started with even if the file was
replaced since (the file must still exist: the run's config names it). Leaves the
file does not hold (a new task's head) are not held back; a leaf whose shape differs from the
file's is an error (another model, or another trainable set of layers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.io.fisher import load_fisher
from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermSetup, TermValue
from ftjax.settings import ConfigError, setting
from ftjax.utils.paths import path_str


@dataclasses.dataclass(frozen=True)
class EWCConfig(TermConfig):
    fisher: str = setting("", "the Fisher file (or a run directory holding fisher.safetensors) "
                          "that `ftjax fisher` wrote for the earlier tasks")

    def __post_init__(self):
        super().__post_init__()
        if not self.fisher:
            raise ValueError("ewc needs `fisher`: the Fisher file of the earlier tasks")


def _fisher_tree(trainable: Any, diagonal: dict[str, np.ndarray], where: str) -> Any:
    """The file's diagonal laid out like the trainable half (zeros where it has no entry)."""
    held = []

    def leaf(key_path, x):
        path = path_str(key_path)
        if path not in diagonal:
            return np.zeros(x.shape, np.float32)
        if tuple(diagonal[path].shape) != tuple(x.shape):
            raise ConfigError(f"{where}: {path} has shape {tuple(diagonal[path].shape)} in the "
                              f"Fisher file but {tuple(x.shape)} in this run (another model, or "
                              f"other trained layers)")
        held.append(path)
        return np.asarray(diagonal[path], np.float32)

    tree = jax.tree_util.tree_map_with_path(leaf, trainable)
    if not held:
        raise ConfigError(f"{where}: the Fisher file holds none of this run's trainable leaves")
    return tree


class EWC(LossTerm):
    """(1/2) sum F (w - w0)^2 over the trainable leaves; F from `fisher`, w0 the start."""

    Config = EWCConfig
    per_example = False

    def init_state(self, setup: TermSetup) -> Any:
        diagonal, _ = load_fisher(self.config.fisher)
        fisher = _fisher_tree(setup.trainable, diagonal, f"losses.{self.name}.fisher")
        anchor = jax.tree.map(lambda w: np.asarray(w, np.float32), setup.trainable)
        return {"fisher": setup.place_like_trainable(fisher),
                "anchor": setup.place_like_trainable(anchor)}

    def __call__(self, ctx: TermContext) -> TermValue:
        fisher, anchor = ctx.state["fisher"], ctx.state["anchor"]
        parts = jax.tree.map(
            lambda w, f, w0: jnp.sum(f * jnp.square(w.astype(jnp.float32) - w0)),
            ctx.trainable, fisher, anchor)
        return TermValue(total=0.5 * sum(jax.tree.leaves(parts), jnp.zeros(())))


__all__ = ["EWC", "EWCConfig"]
