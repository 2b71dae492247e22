"""Put a PEFT method's fresh leaves into an already-loaded model.

A method's leaves are created by the model's own modules when its config asks for them
(DESIGN.md 1). Pretrained loading fills only the base leaves; this module then initializes just
the new ones and inserts them, so a checkpoint never has to know about adapters.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax

from ftjax.peft.lora import LoraConfig, insert_lora, lora_only, lora_paths


def with_lora(model, lora: LoraConfig | None):
    """The same Model (head included) whose backbone config asks for `lora` (None removes it)."""
    return dataclasses.replace(model, config=model.config.with_policy(lora=lora))


def add_lora(model, params: dict, config: LoraConfig, rng: jax.Array) -> tuple[Any, dict]:
    """Returns (model with LoRA, params with freshly initialized lora_a / lora_b leaves).

    The base leaves are reused untouched; only the new leaves are initialized (init_selected).
    """
    if lora_only(params):
        raise ValueError(f"params already carry LoRA leaves at {lora_paths(params)}; "
                         "merge or split them off first")
    new_model = with_lora(model, config)
    _check_targets(model, config)
    # The models import ftjax.peft (Dense uses the LoRA math): import them lazily to keep
    # `import ftjax.peft` and `import ftjax.models` acyclic in either order.
    from ftjax.models.model import init_selected

    fresh = init_selected(new_model, rng, lora_only)
    return new_model, insert_lora(params, fresh)


def dense_module_paths(model) -> list[str]:
    """Canonical per-layer paths of the LoRA candidates: every backbone module with a `kernel`
    and an untied LM head (`head`). Task heads (`head/classifier`, ...) are new and train whole."""
    per_layer = dataclasses.replace(model, config=model.config.with_policy(scan_layers=False,
                                                                           lora=None))
    from ftjax.models.model import param_shapes  # lazily, as in add_lora

    shapes = param_shapes(per_layer)
    paths = []
    for key_path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = [str(getattr(k, "key", k)) for k in key_path]
        if names[-1] == "kernel" and names[0] != "head" or names == ["head", "kernel"]:
            paths.append("/".join(names[:-1]))
    return paths


def _check_targets(model, config: LoraConfig) -> None:
    """Fail loudly on a regex that targets nothing, or that a scanned model cannot honour."""
    candidates = dense_module_paths(model)
    targeted = [p for p in candidates if config.targets_module(p)]
    if not targeted:
        raise ValueError(f"lora targets {config.targets!r} match no module; modules with a "
                         f"kernel are:\n  " + "\n  ".join(candidates))
    if model.config.scan_layers:
        # Stacked layers share one structure: either every layer gets the adapter or none does.
        per_block = {}
        for path in candidates:
            m = re.match(r"^(.*/)?layers_(\d+)/(.+)$", path)
            if m:
                per_block.setdefault(m.group(3), set()).add(config.targets_module(path))
        mixed = sorted(rest for rest, hits in per_block.items() if len(hits) > 1)
        if mixed:
            raise ValueError(
                f"lora targets {config.targets!r} select some layers' {mixed} but not all; "
                "with scan_layers every layer must be targeted alike (use scan_layers=False)")
