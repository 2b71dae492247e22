"""Trained adapters composed for a new task, frozen: fusion (AdapterFusion) or stacking.

    compose_adapters(model, params, {name: adapter}, adapter_config, mode, rng, target=None)

`model` / `params`: the base with the new task's head; each adapter: the adapter leaves of a
trained adapter (split_leaves(its params, ADAPTER_LEAVES)[1]), all of one AdapterConfig. The
result holds them as named adapters at each place (ftjax.nn.adapters.ComposedAdapters):

    fusion  fresh fusion leaves (adapter_<place>/fusion/{query,key,value}) attend over the
            adapters' outputs; the method `fusion` trains those and the head
    stack   the adapters one after another, then a fresh adapter `target`; the method `stack`
            trains that one and the head

The source adapters never train (the methods' specs leave them frozen).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax

from ftjax.models.model import init_selected
from ftjax.nn.adapters import ADAPTER_LEAVES, AdapterConfig
from ftjax.peft.attach import with_peft
from ftjax.settings import from_config, setting
from ftjax.utils.tree import insert_leaves, leaf_paths, split_leaves

FUSION_LEAVES = r".*/adapter_(?:attn|mlp)/fusion/.*"


def stacked_leaves(target: str) -> str:
    """The regex of the leaves of composed adapter `target` (what method `stack` trains)."""
    return rf".*/adapter_(?:attn|mlp)/{target}/.*"


@dataclasses.dataclass(frozen=True)
class ComposeConfig:
    """The `compose` block of methods fusion and stack."""

    adapters: tuple[str, ...] = setting(
        (), "the trained adapters to compose, each NAME=DIR (an adapter directory, a run's "
        "adapter/, or a task's adapter in a run's adapters/); all of one adapter kind and size")
    target: str = setting("target", "stack: the name of the new adapter stacked last, the one "
                          "that trains")

    def __post_init__(self):
        object.__setattr__(self, "adapters", tuple(self.adapters))

    @classmethod
    def from_config(cls, cfg) -> "ComposeConfig":
        return from_config(cls, cfg, "compose")

    def named(self) -> dict[str, str]:
        out = {}
        for value in self.adapters:
            name, _, directory = str(value).partition("=")
            if not name or not directory:
                raise ValueError(f"compose.adapters entry {value!r}: expected NAME=DIR")
            if name in out:
                raise ValueError(f"compose.adapters names {name!r} twice")
            out[name] = directory
        return out


def compose_adapters(model, params: dict, adapters: Mapping[str, dict],
                     adapter_config: AdapterConfig, mode: str, rng: jax.Array, *,
                     target: str | None = None) -> tuple:
    """(model with the composed adapters, params with them and the fresh leaves)."""
    if model.config.adapter is not None:
        raise ValueError("the model already has adapters; compose onto the bare base")
    if leaf_paths(split_leaves(params, ADAPTER_LEAVES)[1]):
        raise ValueError("params already hold adapter leaves; compose onto the bare base")
    if not adapters:
        raise ValueError("no adapters to compose")
    names = tuple(adapters)
    if mode == "stack":
        if not target or target in names:
            raise ValueError(f"stacking adds a new adapter: name it (target) apart from "
                             f"{list(names)}")
        names = (*names, target)
    elif mode != "fusion":
        raise ValueError(f"unknown composition {mode!r}; expected fusion or stack")
    config = dataclasses.replace(adapter_config, compose=names, composition=mode)
    new_model = with_peft(model, adapter=config)
    fresh = init_selected(new_model, rng, lambda p: split_leaves(p, ADAPTER_LEAVES)[1])
    for name, adapter in adapters.items():
        nested = _nested(adapter, name)
        missing = set(leaf_paths(nested)) - set(leaf_paths(fresh))
        if missing:
            raise ValueError(f"adapter {name!r} holds leaves the composed model has no place "
                             f"for: {sorted(missing)[:3]} (another kind or model?)")
        fresh = insert_leaves(fresh, nested)
    return new_model, insert_leaves(params, fresh)


def _nested(tree: dict, name: str) -> dict:
    """An adapter's leaves with `name` inserted under each adapter module: adapter_<place>/
    down/kernel -> adapter_<place>/<name>/down/kernel."""
    return {key: ({name: value} if key.startswith("adapter_") else _nested(value, name))
            for key, value in tree.items()}
