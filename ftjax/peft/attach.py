"""Put a PEFT method's fresh leaves into an already-loaded model, and take them out again.

A method's leaves are created by the model's own modules when its config field asks for them
(DESIGN.md 1). Pretrained loading fills only the base leaves; `add_peft` then sets the field,
initializes just the new leaves (init_selected: the rest of the model is never initialized) and
inserts them, so a checkpoint never has to know about adapters.

    method     config field   config class    leaves (one regex each, PEFT_LEAVES)
    lora       lora           LoraConfig      .../lora_a, .../lora_b in targeted Dense layers
    houlsby    adapter        AdapterConfig   layers_N/adapter_attn/..., layers_N/adapter_mlp/...
    pfeiffer   adapter        AdapterConfig   layers_N/adapter_mlp/...
    prefix     prefix         PrefixConfig    .../prefix_k, .../prefix_v (or prefix_encoder/...)
    prompt     prompt         PromptConfig    backbone/soft_prompt
    ia3        ia3            IA3Config       .../ia3_scale in targeted Dense layers
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp

from ftjax.models.model import init_selected, param_shapes
from ftjax.nn import ia3 as ia3_lib
from ftjax.nn import lora as lora_lib
from ftjax.nn.adapters import ADAPTER_LEAVES, AdapterConfig
from ftjax.nn.dense_methods import DenseMethod
from ftjax.nn.ia3 import IA3_LEAVES, IA3Config
from ftjax.nn.lora import LORA_PATTERN, LoraConfig, lora_only, lora_paths
from ftjax.nn.prefix import PREFIX_LEAVES, PrefixConfig
from ftjax.nn.prompt import PROMPT_LEAVES, PromptConfig, initial_prompt
from ftjax.utils.paths import key_name
from ftjax.utils.tree import insert_leaves, leaf_paths, split_leaves

# method -> (model config field, settings class, regex of the leaves it adds)
PEFT_METHODS: dict[str, tuple[str, type, str]] = {
    "lora": ("lora", LoraConfig, LORA_PATTERN),
    "houlsby": ("adapter", AdapterConfig, ADAPTER_LEAVES),
    "pfeiffer": ("adapter", AdapterConfig, ADAPTER_LEAVES),
    "prefix": ("prefix", PrefixConfig, PREFIX_LEAVES),
    "prompt": ("prompt", PromptConfig, PROMPT_LEAVES),
    "ia3": ("ia3", IA3Config, IA3_LEAVES),
}
PEFT_LEAVES = {method: leaves for method, (_, _, leaves) in PEFT_METHODS.items()}
MERGEABLE = ("lora", "ia3")  # fields whose leaves fold into the base weights


def with_peft(model, **fields):
    """The same Model (head included) with the given PEFT config fields set (None removes)."""
    return dataclasses.replace(model, config=model.config.with_policy(**fields))


def with_lora(model, lora: LoraConfig | None):
    """The same Model (head included) whose backbone config asks for `lora` (None removes it)."""
    return with_peft(model, lora=lora)


def method_config(method: str, config: Any = None):
    """A method's settings object from a ConfigDict / mapping / instance / None (defaults).

    houlsby and pfeiffer share AdapterConfig; the method name sets its `kind`.
    """
    if method not in PEFT_METHODS:
        raise ValueError(f"unknown PEFT method {method!r}; expected one of {tuple(PEFT_METHODS)}")
    field, cls, _ = PEFT_METHODS[method]
    if cls is AdapterConfig:
        if isinstance(config, AdapterConfig):
            if config.kind != method:
                raise ValueError(f"method {method!r} was given an AdapterConfig of kind "
                                 f"{config.kind!r}")
            return config
        values = {} if config is None else (config.to_dict() if hasattr(config, "to_dict")
                                            else dict(config))
        if values.setdefault("kind", method) != method:
            raise ValueError(f"method {method!r} was given adapter kind {values['kind']!r}")
        return AdapterConfig.from_config(values)
    return cls.from_config(config)


def add_peft(model, params: dict, method: str, config: Any, rng: jax.Array, *,
             tokenizer=None) -> tuple[Any, dict]:
    """Returns (model with `method`, params with its freshly initialized leaves).

    The base leaves are reused untouched; only the new leaves are initialized. `config` is the
    method's settings (see `method_config`). tokenizer: needed only by prompt tuning's
    init="text". A soft prompt starts from the pretrained embedding table (ftjax.nn.prompt).
    """
    settings = method_config(method, config)
    field, _, leaves = PEFT_METHODS[method]
    if getattr(model.config, field) is not None:
        raise ValueError(f"the model already has {field}={getattr(model.config, field)}; "
                         f"remove it (with_peft({field}=None)) before adding {method}")
    present = leaf_paths(split_leaves(params, leaves)[1])
    if present:
        raise ValueError(f"params already carry {method} leaves: {present[:4]}"
                         + (" ..." if len(present) > 4 else ""))
    if method in ("lora", "ia3"):
        _check_targets(model, settings, method)
    if method == "prompt":  # from the pretrained embedding table, which init cannot see
        table = model.apply({"params": params}, method=lambda m: m.backbone.embedding_table())
        prompt = initial_prompt(settings, table, jax.random.fold_in(rng, 1), tokenizer)
    new_model = with_peft(model, **{field: settings})

    fresh = init_selected(new_model, rng, lambda p: split_leaves(p, leaves)[1])
    if method == "prompt":
        random = fresh["backbone"]["soft_prompt"]
        fresh["backbone"]["soft_prompt"] = jnp.asarray(prompt, random.dtype).reshape(random.shape)
    return new_model, insert_leaves(params, fresh)


def add_dense_method(model, params: dict, method: DenseMethod,
                     rng: jax.Array) -> tuple[Any, dict]:
    """Returns (model whose Dense layers also run `method`, params with its fresh leaves).

    The extension point for a new PEFT method (ftjax.nn.dense_methods): only the leaves matching
    `method.leaves` are initialized; a method that targets nothing is an error."""
    if not any(method.targets_module(p) for p in dense_module_paths(model)):
        raise ValueError(f"{type(method).__name__} targets {method.targets!r} match no module; "
                         f"modules with a kernel: {module_names(dense_module_paths(model))}")
    present = leaf_paths(split_leaves(params, method.leaves)[1])
    if present:
        raise ValueError(f"params already carry {type(method).__name__} leaves: {present[:4]}")
    new_model = with_peft(model, dense_methods=(*model.config.dense_methods, method))
    fresh = init_selected(new_model, rng, lambda p: split_leaves(p, method.leaves)[1])
    if not leaf_paths(fresh):
        raise ValueError(f"{type(method).__name__} added no leaf matching its `leaves` "
                         f"{method.leaves!r}")
    return new_model, insert_leaves(params, fresh)


def add_lora(model, params: dict, config: LoraConfig, rng: jax.Array) -> tuple[Any, dict]:
    """Returns (model with LoRA, params with freshly initialized lora_a / lora_b leaves)."""
    if lora_only(params):
        raise ValueError(f"params already carry LoRA leaves at {lora_paths(params)}; "
                         "merge or split them off first")
    return add_peft(model, params, "lora", config, rng)


def merge_peft(model, params: dict) -> tuple[Any, dict]:
    """(base model, params) with every PEFT method folded into the base weights (LoRA first,
    then (IA)^3, which is exact in that order). Methods that add computation the pretrained
    architecture lacks cannot be merged: a ValueError names them."""
    cfg = model.config
    unmergeable = [m for m in cfg.peft_methods if m not in MERGEABLE]
    unmergeable += [type(m).__name__ for m in cfg.dense_methods]
    if unmergeable:
        names = [f"{cfg.adapter.kind} adapters" if m == "adapter" else
                 m if m not in cfg.peft_methods else f"{m} tuning" for m in unmergeable]
        raise ValueError(
            f"{', '.join(names)} cannot be merged into the pretrained architecture's weights "
            "(adapters add layers, prefix and prompt tuning add attention inputs), so no "
            "Hugging Face model can hold this run; its checkpoint serves `ftjax eval` and "
            "`ftjax generate --adapter RUN`")
    if cfg.lora is not None:
        params = lora_lib.merge(params, cfg.lora)
    if cfg.ia3 is not None:
        params = ia3_lib.merge(params, cfg.ia3)
    return with_peft(model, lora=None, ia3=None), params


def dense_module_paths(model) -> list[str]:
    """Canonical per-layer paths of the LoRA candidates: every backbone module with a `kernel`
    and an untied LM head (`head`). Task heads (`head/classifier`, ...) are new and train whole."""
    per_layer = dataclasses.replace(
        model, config=model.config.without_peft().with_policy(scan_layers=False))

    shapes = param_shapes(per_layer)
    paths = []
    for key_path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = [key_name(k) for k in key_path]
        if names[-1] == "kernel" and names[0] != "head" or names == ["head", "kernel"]:
            paths.append("/".join(names[:-1]))
    return paths


def module_names(paths: list[str]) -> str:
    """Module paths on one line, every block's modules shown once as layers_N."""
    return ", ".join(dict.fromkeys(re.sub(r"layers_\d+/", "layers_N/", p) for p in paths))


def _check_targets(model, config, method: str) -> None:
    """Fail loudly on a regex that targets nothing, or that a scanned model cannot honour."""
    candidates = dense_module_paths(model)
    targeted = [p for p in candidates if config.targets_module(p)]
    if not targeted:
        raise ValueError(f"{method} targets {config.targets!r} match no module; modules with a "
                         f"kernel: {module_names(candidates)}")
    if model.config.scan_layers:
        # Stacked layers share one structure: either every layer gets the leaves (of the same
        # shape: (IA)^3's feedforward choice too) or none does.
        choices = [("targets", config.targets_module)]
        if isinstance(config, IA3Config):
            choices.append(("feedforward", config.is_feedforward))
        for what, chosen in choices:
            per_block = {}
            for path in candidates:
                m = re.match(r"^(.*/)?layers_(\d+)/(.+)$", path)
                if m:
                    per_block.setdefault(m.group(3), set()).add(chosen(path))
            mixed = sorted(rest for rest, hits in per_block.items() if len(hits) > 1)
            if mixed:
                raise ValueError(
                    f"{method} {what} {getattr(config, what)!r} select some layers' {mixed} but "
                    "not all; with scan_layers every layer must be targeted alike (use "
                    "scan_layers=False)")


