"""(IA)^3 (Liu et al., 2022): learned vectors that rescale keys, values and the MLP activation.

    k = (x @ Wk + bk) * l_k,   v = (x @ Wv + bv) * l_v,   out = (h * l_ff) @ W_down + b_down

All vectors start at one, so the adapted model is exactly the base model at init. Leaves: every
targeted `Dense` (ftjax.nn.layers) owns `ia3_scale` beside its kernel:
  output-side (keys, values): (out,), the kernel's out-axis ("kv_heads" for Llama, "heads" for
    BERT), scaling the projection's output, bias included;
  input-side ("feedforward" modules: Llama's down_proj, BERT's MLP output dense): (in,), the
    kernel's in-axis ("mlp"), scaling its input, i.e. silu(gate) * up in Llama and the GELU
    output in BERT.
This is HF PEFT's IA3 layout (`ia3_l`, `feedforward_modules`), with the paper's targets.

Merge: an output-side vector scales the kernel's columns and the bias; an input-side vector
scales the kernel's rows. The merged tree is the base architecture's, so `ftjax export --format
hf` writes it like a merged LoRA run.

Targets and feedforward are `re.fullmatch`ed against canonical module paths (the names are
listed in ftjax.nn.lora's docstring); a scanned model matches as layer 0.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ftjax.settings import from_config, setting
from ftjax.utils.tree import canonical_module_path

IA3_LEAVES = r".*/ia3_scale"
# Keys, values and the MLP's down projection (whose input is the intermediate activation).
DEFAULT_TARGETS = (r".*/(?:self_attn/(?:k_proj|v_proj)|mlp/down_proj"
                   r"|attention/(?:key|value)|layers_\d+/output)")
DEFAULT_FEEDFORWARD = r".*/(?:mlp/down_proj|layers_\d+/output)"


@dataclasses.dataclass(frozen=True)
class IA3Config:
    """(IA)^3 settings (the `ia3` config block)."""

    targets: str = setting(
        DEFAULT_TARGETS, "regex over module paths: the Dense layers that get a scaling vector "
        "(default: keys, values and the MLP output projection of every block)")
    feedforward: str = setting(
        DEFAULT_FEEDFORWARD, "regex over module paths: which targets scale their input (the MLP "
        "activation entering the output projection) rather than their output")

    def __post_init__(self):
        for name in ("targets", "feedforward"):
            try:
                re.compile(getattr(self, name))
            except re.error as err:
                raise ValueError(f"ia3 {name} {getattr(self, name)!r} is not a valid regex: "
                                 f"{err}") from None

    def targets_module(self, module_path: str) -> bool:
        return re.fullmatch(self.targets, canonical_module_path(module_path)) is not None

    def is_feedforward(self, module_path: str) -> bool:
        return re.fullmatch(self.feedforward, canonical_module_path(module_path)) is not None

    @classmethod
    def from_config(cls, cfg: Any) -> "IA3Config":
        """From a ConfigDict / mapping / IA3Config / None; unknown keys are an error."""

        return from_config(cls, cfg, "ia3")


def ia3_scale(module: nn.Module, size: int, axis: str):
    """The module's (size,) vector of ones (created on first use), in the module's dtype."""
    scale = module.param("ia3_scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                   (axis,)),
                         (size,), module.param_dtype)
    return scale.astype(module.dtype)


# ---- merge into the base weights ----

def merge(params: dict, config: IA3Config) -> dict:
    """Fold every `ia3_scale` into its module's kernel (and bias); returns the tree without
    (IA)^3 leaves, for the base model (the config without `ia3`). Works in either layout."""

    def fold(module: dict, path: str) -> dict:
        if "lora_a" in module:
            raise ValueError(f"{path} carries both LoRA and (IA)^3 leaves; merge LoRA first")
        scale = module["ia3_scale"].astype(jnp.float32)
        kernel = module["kernel"]
        rest = {k: v for k, v in module.items() if k != "ia3_scale"}
        if config.is_feedforward(path):  # input side: rows of the (..., in, out) kernel
            rest["kernel"] = (kernel.astype(jnp.float32) * scale[..., :, None]).astype(kernel.dtype)
        else:  # output side: columns and the bias
            rest["kernel"] = (kernel.astype(jnp.float32) * scale[..., None, :]).astype(kernel.dtype)
            if "bias" in module:
                rest["bias"] = (module["bias"].astype(jnp.float32) * scale).astype(
                    module["bias"].dtype)
        return rest

    def walk(tree: dict, prefix: str) -> dict:
        if "ia3_scale" in tree:
            return fold(tree, prefix)
        return {k: walk(v, f"{prefix}/{k}" if prefix else k) if isinstance(v, dict) else v
                for k, v in tree.items()}

    return walk(params, "")
