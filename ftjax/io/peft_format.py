"""LoRA adapters in Hugging Face PEFT's format: adapter_config.json + adapter_model.safetensors.

    save_peft(model, params, out_dir)      -> a directory `peft.PeftModel.from_pretrained` loads
    load_peft(model, params, adapter_dir)  -> (model with LoRA (and head), params with the adapter)
    peft_refusal(model, params, mask)      -> why the run cannot be a PEFT adapter, or None

Key names are the transformers module names (ftjax.io.hf's tables) under peft's prefix:
    base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight   (r, in)   = lora_a.T
    base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight   (out, r)  = lora_b.T
BERT adapters use `BertModel` names (`base_model.model.encoder.layer.3.attention.self.query...`).
`target_modules` lists the full module names, so peft targets exactly the modules we adapted.

A new task head is part of what the adapted model computes, so it is written the way peft saves
a `modules_to_save` module: the module's whole state dict under its attribute name in the
transformers task model, without an adapter name, and the module listed in `modules_to_save`;
`task_type` makes `PeftModel.from_pretrained` build the matching PeftModelFor... class. The
backbone's keys then carry that class's attribute for it (`bert.` for BERT):
    base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight
    base_model.model.classifier.weight  (num_labels, D) = head/classifier/kernel.T
    base_model.model.classifier.bias    (num_labels,)   = head/classifier/bias
The transformers class each head maps to is in HEAD_MODULES; it computes what our head does
only under conditions that `peft_refusal` checks (BertForSequenceClassification classifies the
pooler's output, so the head must pool with "pooler"; LlamaForSequenceClassification's `score`
has no bias and reads the last non-pad token). A head HEAD_MODULES does not map (a verbalizer,
which no transformers class has; an MLM head; a Llama span head) or that fails its class's
conditions is refused, never dropped: an adapter that loads without its head would classify with
a random one. The same holds for any other trained leaf that is not LoRA (custom rules that train
layer norms, a trained LM head).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ftjax.io.atomic_dir import atomic_dir
from ftjax.io.hf import BERT_NAMES, LLAMA_NAMES
from ftjax.io.loading import CheckpointError, flatten, unflatten
from ftjax.models import HeadConfig, LlamaConfig, Model, param_shapes
from ftjax.models.layout import to_layout
from ftjax.nn.lora import LoraConfig, insert_lora, lora_only, lora_paths
from ftjax.optim.trainability import layer_flags
from ftjax.peft.attach import with_lora

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclasses.dataclass(frozen=True)
class HeadModule:
    """Where one of our task heads lives in a transformers task model.

    model_class: the transformers class that holds it (what the base is loaded as for peft).
    backbone: that class's attribute holding the bare model, as a key prefix ("bert." for BERT;
      "" for Llama, whose names in ftjax.io.hf already start with its `model.`).
    module: the head module's attribute in that class.
    ours: the name of our head's Dense: its leaves are `head/<ours>/{kernel,bias}`.
    bias: whether the transformers module has a bias (ours always has one).
    task_type: peft's TaskType for the class.
    pooling: the pooling our head must use to compute what the class computes (None: any).
    """

    model_class: str
    backbone: str
    module: str
    ours: str
    bias: bool
    task_type: str
    pooling: str | None = None


HEAD_MODULES: dict[tuple[str, str], HeadModule] = {
    ("bert", "sequence"): HeadModule("BertForSequenceClassification", "bert.", "classifier",
                                     "classifier", True, "SEQ_CLS", pooling="pooler"),
    ("bert", "token"): HeadModule("BertForTokenClassification", "bert.", "classifier",
                                  "classifier", True, "TOKEN_CLS"),
    ("bert", "span"): HeadModule("BertForQuestionAnswering", "bert.", "qa_outputs", "qa_outputs",
                                 True, "QUESTION_ANS"),
    ("llama", "sequence"): HeadModule("LlamaForSequenceClassification", "", "score",
                                      "classifier", False, "SEQ_CLS", pooling="last"),
    ("llama", "token"): HeadModule("LlamaForTokenClassification", "", "score", "classifier",
                                   True, "TOKEN_CLS"),
}
_POOLED = {"pooler": "BERT's pooler output", "last": "the last non-padding token"}
# Heads an adapter does not carry: the base's own LM head, or none at all.
_BASE_HEADS = ("lm", "none")


def _names(model: Model):
    return LLAMA_NAMES if isinstance(model.config, LlamaConfig) else BERT_NAMES


def _hf_module(model: Model, module_path: str) -> str:
    key = _names(model).expected_key(f"{module_path}/kernel")
    if key is None or not key.endswith(".weight"):
        raise CheckpointError(f"save_peft: no Hugging Face module name for {module_path}")
    return key.removesuffix(".weight")


def _is_lora(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ("lora_a", "lora_b")


def peft_refusal(model: Model, params: dict[str, Any], trainable_mask: Any = None) -> str | None:
    """Why `model` with `params` cannot be written as a PEFT LoRA adapter that computes the same
    function (one line), or None when it can. `trainable_mask` (the run's trainability mask)
    lets trained leaves other than LoRA and the task head be found; without it only the head is
    checked."""
    if model.config.lora is None or model.config.peft_methods != ("lora",):
        return (f"a PEFT adapter here holds LoRA only, and this model's methods are "
                f"{', '.join(model.config.peft_methods) or 'none'}")
    if model.task_heads:
        return (f"the run is multi-task: its task heads {[n for n, _ in model.task_heads]} "
                f"map to no one transformers model, so peft would load the adapter without "
                f"them")
    head = model.head_config
    arch = model.config.arch
    if head.kind not in _BASE_HEADS:
        target = HEAD_MODULES.get((arch, head.kind))
        if head.kind == "verbalizer":
            return ("the run has a verbalizer head (the LM head's rows of the label words, "
                    "trained as a classifier), which no transformers model class has, so peft "
                    "would load the adapter without it")
        if target is None:
            return (f"the run has a {head.kind!r} head on {arch}, which this exporter maps to "
                    f"no transformers module, so peft would load the adapter without it")
        if target.pooling is not None and head.pooling != target.pooling:
            return (f"{target.model_class} classifies {_POOLED[target.pooling]} (our pooling "
                    f"{target.pooling!r}), but this head pools with {head.pooling!r}, so peft "
                    f"would compute other logits")
        if not target.bias:
            bias = params.get("head", {}).get(target.ours, {}).get("bias")
            if bias is not None and np.any(np.asarray(jax.device_get(bias)) != 0):
                return (f"{target.model_class}.{target.module} has no bias, but this head's "
                        f"head/{target.ours}/bias is not zero, so peft would compute other "
                        f"logits")
    if trainable_mask is not None:
        trained = [path for path, m in flatten(layer_flags(trainable_mask)).items()
                   if np.any(m) and not _is_lora(path)
                   and not (head.kind not in _BASE_HEADS and path.startswith("head/"))]
        if trained:
            shown = ", ".join(trained[:3]) + (f" and {len(trained) - 3} more"
                                              if len(trained) > 3 else "")
            return (f"besides LoRA the run trained {shown}, which a PEFT LoRA adapter of "
                    f"ours does not hold")
    return None


def save_peft(model: Model, params: dict[str, Any], out_dir: str | os.PathLike, *,
              base_model_name_or_path: str | None = None, trainable_mask: Any = None,
              overwrite: bool = False) -> Path:
    """Write the LoRA leaves of `params` (either layout) for `model` (whose config.lora is set),
    and its task head as a peft `modules_to_save` module (see the module docstring).

    base_model_name_or_path: recorded in adapter_config.json (what peft loads as the base).
    trainable_mask: the run's trainability mask; trained leaves that are neither LoRA nor the
      task head are then refused instead of being left out (peft_refusal).
    overwrite: replace a non-empty `out_dir` (only once the adapter is complete); without it a
      non-empty `out_dir` is refused with OutputExistsError (ftjax.io.atomic_dir).
    Raises CheckpointError when the adapter could not compute what `model` computes.
    """
    lora_cfg = model.config.lora
    if lora_cfg is None:
        raise ValueError("save_peft: the model has no LoRA config (model.config.lora is None)")
    refusal = peft_refusal(model, params, trainable_mask)
    if refusal:
        raise CheckpointError(f"save_peft: {refusal}")
    params = to_layout(params, scan_layers=False)
    adapter = flatten(lora_only(params))
    if not adapter:
        raise ValueError("save_peft: params carry no lora_a / lora_b leaves")
    head = HEAD_MODULES.get((model.config.arch, model.head_config.kind))
    backbone = head.backbone if head else ""
    tensors, modules = {}, []
    for module_path in lora_paths(unflatten(adapter)):
        module = backbone + _hf_module(model, module_path)
        modules.append(module)
        a = np.asarray(jax.device_get(adapter[f"{module_path}/lora_a"]))
        b = np.asarray(jax.device_get(adapter[f"{module_path}/lora_b"]))
        # torch Linear layout (out, in): A is Linear(in -> r), B is Linear(r -> out).
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T)
    if head is not None:
        dense = params["head"][head.ours]
        kernel = np.asarray(jax.device_get(dense["kernel"]))
        tensors[f"{PREFIX}{head.module}.weight"] = np.ascontiguousarray(kernel.T)
        if head.bias:
            tensors[f"{PREFIX}{head.module}.bias"] = np.asarray(jax.device_get(dense["bias"]))
        task_type = head.task_type
    else:
        is_lm = isinstance(model.config, LlamaConfig) and model.head_config.kind == "lm"
        task_type = "CAUSAL_LM" if is_lm else None
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora_cfg.rank,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "use_rslora": lora_cfg.rslora,
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": [head.module] if head else None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    # Whole or not at all: a refused or failed export leaves `out_dir` as it was.
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return Path(out_dir)


def load_peft(model: Model, params: dict[str, Any], adapter_dir: str | os.PathLike
              ) -> tuple[Model, dict[str, Any]]:
    """Attach a PEFT LoRA adapter directory to a base model (params without LoRA leaves).

    An adapter with a task head (`modules_to_save` of a HEAD_MODULES module, as save_peft
    writes and peft saves) replaces the model's head by it: the result's HeadConfig has the
    kind of the adapter's task_type, num_labels from the head's shape and the pooling the
    transformers class computes; a head without a bias (Llama's `score`) gets a zero one.
    """
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / CONFIG_FILE
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: not a readable PEFT adapter config ({err})"
                              ) from None
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{adapter_dir}: peft_type {config.get('peft_type')!r} is not LORA")
    kind, head = _adapter_head(model, config)
    unsupported = {k: config[k] for k in ("fan_in_fan_out", "use_dora") if config.get(k)}
    if config.get("bias", "none") != "none":
        unsupported.update(bias=config.get("bias"))
    if config.get("modules_to_save") and head is None:
        unsupported.update(modules_to_save=config.get("modules_to_save"))
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        unsupported.update(rank_pattern=config.get("rank_pattern"),
                           alpha_pattern=config.get("alpha_pattern"))
    if unsupported:
        raise CheckpointError(f"{adapter_dir}: unsupported LoRA options {unsupported}")

    weights_file = adapter_dir / WEIGHTS_FILE
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from None
    names = _names(model)
    adapter, head_tensors, unknown = {}, {}, []
    for key, value in weights.items():
        # peft files may keep the adapter name (`.lora_A.default.weight`) in older versions.
        stem = key.removeprefix(PREFIX).replace(".default.weight", ".weight")
        if head is not None and stem in (f"{head.module}.weight", f"{head.module}.bias"):
            head_tensors[stem.rsplit(".", 1)[1]] = value
            continue
        if model.config.arch == "bert":  # a task model's encoder (BertFor...): `bert.`
            stem = stem.removeprefix("bert.")
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

    if head is not None:
        model, params = _with_head(model, params, kind, head, head_tensors, adapter_dir)
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


def _adapter_head(model: Model, config: dict) -> tuple[str | None, HeadModule | None]:
    """(our head kind, its HEAD_MODULES entry) of an adapter that saves a task head for this
    architecture's task_type class; (None, None) if it saves none."""
    kinds = {m.task_type: kind for (arch, kind), m in HEAD_MODULES.items()
             if arch == model.config.arch}
    kind = kinds.get(config.get("task_type"))
    head = HEAD_MODULES.get((model.config.arch, kind))
    # peft itself lists every classifier name it knows ("classifier", "score"); the one this
    # architecture's class has is the one saved.
    if head is None or head.module not in (config.get("modules_to_save") or []):
        return None, None
    return kind, head


def _with_head(model: Model, params: dict, kind: str, head: HeadModule, tensors: dict,
               adapter_dir: Path) -> tuple[Model, dict]:
    expected = {"weight", "bias"} if head.bias else {"weight"}
    if set(tensors) != expected:
        raise CheckpointError(
            f"{adapter_dir}: modules_to_save {head.module!r} needs the tensors "
            f"{sorted(f'{PREFIX}{head.module}.{t}' for t in expected)}, found "
            f"{sorted(f'{PREFIX}{head.module}.{t}' for t in tensors)}")
    if head.pooling == "pooler" and not getattr(model.config, "add_pooler", False):
        raise CheckpointError(f"{adapter_dir}: {head.model_class} classifies BERT's pooler "
                              f"output, and this base has no pooler")
    weight = tensors["weight"]
    dropout = model.head_config.dropout if model.head_config.kind == kind else 0.0
    head_config = HeadConfig(kind=kind, num_labels=int(weight.shape[0]),
                             pooling=head.pooling or model.head_config.pooling, dropout=dropout)
    new_model = dataclasses.replace(model, head_config=head_config)
    dtype = model.config.weight_dtype
    bias = tensors.get("bias", np.zeros(weight.shape[:1], weight.dtype))
    dense = {"kernel": np.asarray(weight.T, dtype), "bias": np.asarray(bias, dtype)}
    shapes = param_shapes(new_model)["head"][head.ours]
    wrong = {k: (dense[k].shape, tuple(shapes[k].shape)) for k in dense
             if dense[k].shape != tuple(shapes[k].shape)}
    if wrong:
        raise CheckpointError(f"{adapter_dir}: the {head.module!r} head does not fit this "
                              f"model: shapes (adapter, model) {wrong}")
    return new_model, {"backbone": params["backbone"], "head": {head.ours: dense}}
