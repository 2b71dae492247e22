"""LoRA adapters in Hugging Face PEFT's format: adapter_config.json + adapter_model.safetensors.

    save_peft(model, params, out_dir)      -> a directory `peft.PeftModel.from_pretrained` loads
    load_peft(model, params, adapter_dir)  -> (model with LoRA, params with the adapter's leaves)

Key names are the transformers module names (ftjax.io.hf's tables) under peft's prefix:
    base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight   (r, in)   = lora_a.T
    base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight   (out, r)  = lora_b.T
BERT adapters use `BertModel` names (`base_model.model.encoder.layer.3.attention.self.query...`).
`target_modules` lists the full module names, so peft targets exactly the modules we adapted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from ftjax.io.hf import BERT_NAMES, LLAMA_NAMES
from ftjax.io.loading import CheckpointError, flatten, unflatten
from ftjax.models import LlamaConfig, Model, param_shapes
from ftjax.models.layout import to_layout
from ftjax.nn.lora import LoraConfig, insert_lora, lora_only, lora_paths
from ftjax.peft.attach import with_lora

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _names(model: Model):
    return LLAMA_NAMES if isinstance(model.config, LlamaConfig) else BERT_NAMES


def _hf_module(model: Model, module_path: str) -> str:
    key = _names(model).expected_key(f"{module_path}/kernel")
    if key is None or not key.endswith(".weight"):
        raise CheckpointError(f"save_peft: no Hugging Face module name for {module_path}")
    return key.removesuffix(".weight")


def save_peft(model: Model, params: dict[str, Any], out_dir: str | os.PathLike, *,
              base_model_name_or_path: str | None = None) -> Path:
    """Write the LoRA leaves of `params` (either layout) for `model` (whose config.lora is set)."""
    lora_cfg = model.config.lora
    if lora_cfg is None:
        raise ValueError("save_peft: the model has no LoRA config (model.config.lora is None)")
    adapter = flatten(lora_only(to_layout(params, scan_layers=False)))
    if not adapter:
        raise ValueError("save_peft: params carry no lora_a / lora_b leaves")
    tensors, modules = {}, []
    for module_path in lora_paths(unflatten(adapter)):
        module = _hf_module(model, module_path)
        modules.append(module)
        a = np.asarray(jax.device_get(adapter[f"{module_path}/lora_a"]))
        b = np.asarray(jax.device_get(adapter[f"{module_path}/lora_b"]))
        # torch Linear layout (out, in): A is Linear(in -> r), B is Linear(r -> out).
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T)
    is_lm = isinstance(model.config, LlamaConfig) and model.head_config.kind == "lm"
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if is_lm else None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora_cfg.rank,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "use_rslora": lora_cfg.rslora,
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def load_peft(model: Model, params: dict[str, Any], adapter_dir: str | os.PathLike
              ) -> tuple[Model, dict[str, Any]]:
    """Attach a PEFT LoRA adapter directory to a base model (params without LoRA leaves)."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{adapter_dir}: peft_type {config.get('peft_type')!r} is not LORA")
    unsupported = {k: config[k] for k in ("fan_in_fan_out", "use_dora") if config.get(k)}
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        unsupported.update(bias=config.get("bias"), modules_to_save=config.get("modules_to_save"))
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        unsupported.update(rank_pattern=config.get("rank_pattern"),
                           alpha_pattern=config.get("alpha_pattern"))
    if unsupported:
        raise CheckpointError(f"{adapter_dir}: unsupported LoRA options {unsupported}")

    names = _names(model)
    adapter, unknown = {}, []
    for key, value in load_file(str(adapter_dir / WEIGHTS_FILE)).items():
        # peft files may keep the adapter name (`.lora_A.default.weight`) in older versions.
        stem = key.removeprefix(PREFIX).replace(".default.weight", ".weight")
        for theirs, ours in (("lora_A", "lora_a"), ("lora_B", "lora_b")):
            if stem.endswith(f".{theirs}.weight"):
                module = stem.removesuffix(f".{theirs}.weight")
                found = names.to_ours(f"{module}.weight")
                if found is None or not found[0].endswith("/kernel"):
                    unknown.append(key)
                else:
                    adapter[found[0].removesuffix("kernel") + ours] = value.T
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{adapter_dir}: adapter tensors with no ftjax module: {unknown}")

    modules = sorted({p.rsplit("/", 1)[0] for p in adapter})
    lora_cfg = LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                          dropout=float(config.get("lora_dropout") or 0.0),
                          # exactly the adapter's modules, whatever pattern peft was given
                          targets="|".join(re.escape(m) for m in modules),
                          rslora=bool(config.get("use_rslora", False)))
    new_model = with_lora(model, lora_cfg)
    lora_tree = unflatten(adapter)
    if "backbone" in lora_tree:
        lora_tree = to_layout(lora_tree, model.config.scan_layers)
    expected = flatten(lora_only(param_shapes(new_model)))
    got = flatten(lora_tree)
    wrong = {p: (tuple(got[p].shape), tuple(expected[p].shape)) for p in got
             if p in expected and tuple(got[p].shape) != tuple(expected[p].shape)}
    if wrong or expected.keys() != got.keys():
        raise CheckpointError(f"{adapter_dir}: adapter does not fit this model: shapes "
                              f"(adapter, model) {wrong}; missing {sorted(expected.keys() - got)}")
    dtype = model.config.weight_dtype
    return new_model, insert_lora(params, jax.tree.map(lambda x: np.asarray(x, dtype), lora_tree))
