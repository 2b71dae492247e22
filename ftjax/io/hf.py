"""Hugging Face checkpoint directories: config.json + safetensors, read and written.

Reading: `read_hf_checkpoint(dir)` gives our config and the tensors under our names (Llama keys
with the `model.` prefix and `lm_head.weight`; BERT keys with or without a `bert.` prefix).
Writing: `save_hf(config, params, out_dir)` writes a directory that
`transformers.AutoModelForCausalLM` (Llama) / `AutoModel` (BERT) load as the same function.

Linear weights are stored (out, in) by torch; our kernels are (in, out): the rules transpose.
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

from ftjax.io.atomic_dir import atomic_dir
from ftjax.io.hf_config import config_from_hf, config_to_hf, read_config_json
from ftjax.io.loading import Checkpoint, CheckpointError, flatten
from ftjax.io.names import NameMap, Rule, convert, transpose
from ftjax.io.safetensors_io import read_tensors, write_tensors
from ftjax.io.tokenizer import Tokenizer
from ftjax.models import BertConfig, LlamaConfig, Model
from ftjax.models.config import BackboneConfig
from ftjax.models.layout import to_layout

CONFIG_FILE = "config.json"


def _linear(checkpoint: str, ours: str) -> Rule:
    return Rule(checkpoint, ours, load=transpose, save=transpose)


LLAMA_NAMES = NameMap([
    Rule("model.embed_tokens.weight", "backbone/embed_tokens/embedding"),
    *(_linear(f"model.layers.{{i}}.self_attn.{p}.weight",
              f"backbone/layers_{{i}}/self_attn/{p}/kernel")
      for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
    *(_linear(f"model.layers.{{i}}.mlp.{p}.weight", f"backbone/layers_{{i}}/mlp/{p}/kernel")
      for p in ("gate_proj", "up_proj", "down_proj")),
    *(Rule(f"model.layers.{{i}}.{n}.weight", f"backbone/layers_{{i}}/{n}/scale")
      for n in ("input_layernorm", "post_attention_layernorm")),
    Rule("model.norm.weight", "backbone/norm/scale"),
    _linear("lm_head.weight", "head/kernel"),
])


def _bert_rules():
    yield Rule("embeddings.word_embeddings.weight", "backbone/embeddings/word_embeddings/embedding")
    yield Rule("embeddings.position_embeddings.weight",
               "backbone/embeddings/position_embeddings/embedding")
    yield Rule("embeddings.token_type_embeddings.weight",
               "backbone/embeddings/token_type_embeddings/embedding")
    yield Rule("embeddings.LayerNorm.weight", "backbone/embeddings/norm/scale")
    yield Rule("embeddings.LayerNorm.bias", "backbone/embeddings/norm/bias")
    layer, ours = "encoder.layer.{i}.", "backbone/layers_{i}/"
    dense = {"attention.self.query": "attention/query", "attention.self.key": "attention/key",
             "attention.self.value": "attention/value",
             "attention.output.dense": "attention/output",
             "intermediate.dense": "intermediate", "output.dense": "output"}
    for theirs, mine in dense.items():
        yield _linear(f"{layer}{theirs}.weight", f"{ours}{mine}/kernel")
        yield Rule(f"{layer}{theirs}.bias", f"{ours}{mine}/bias")
    for theirs, mine in {"attention.output.LayerNorm": "attention_norm",
                         "output.LayerNorm": "output_norm"}.items():
        yield Rule(f"{layer}{theirs}.weight", f"{ours}{mine}/scale")
        yield Rule(f"{layer}{theirs}.bias", f"{ours}{mine}/bias")
    yield _linear("pooler.dense.weight", "backbone/pooler/kernel")
    yield Rule("pooler.dense.bias", "backbone/pooler/bias")


BERT_NAMES = NameMap(_bert_rules())

# Buffers that torch modules save beside their parameters; they hold no learned values.
_KNOWN_BUFFERS = re.compile(
    r"^(bert\.)?embeddings\.position_ids$"  # BERT: arange(max_positions), int64
    r"|^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"  # older Llama checkpoints
)
# Task heads other checkpoints carry (BertForPreTraining, ...ForSequenceClassification, ...).
# When the model being loaded has no place for them, they are dropped (logged), not an error.
_HEAD_KEYS = re.compile(r"^(lm_head|score|cls|classifier|qa_outputs)\.")


def _normalize_bert_key(key: str) -> str:
    # Task checkpoints nest the encoder under `bert.`; TF-converted ones say gamma/beta.
    key = key.removeprefix("bert.")
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$",
                                                                  "LayerNorm.bias", key))


def read_hf_checkpoint(model_dir: str | os.PathLike) -> Checkpoint:
    """Config and tensors (under our names) of an HF checkpoint directory."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{model_dir}: no {CONFIG_FILE}; not a Hugging Face checkpoint directory")
    config = config_from_hf(read_config_json(config_path), where=str(config_path))
    tensors = {k: v for k, v in read_tensors(model_dir).items() if not _KNOWN_BUFFERS.match(k)}
    if isinstance(config, LlamaConfig):
        conversion = convert(tensors, LLAMA_NAMES)
    else:
        normalized = {_normalize_bert_key(k) for k in tensors}
        # BertModel(add_pooling_layer=False) checkpoints have no pooler; the file decides.
        config = dataclasses.replace(config, add_pooler="pooler.dense.weight" in normalized)
        conversion = convert(tensors, BERT_NAMES, normalize_key=_normalize_bert_key)
    conversion.discardable = lambda key: bool(_HEAD_KEYS.match(key))
    return Checkpoint(config=config, conversion=conversion)


def save_hf(
    model_config: BackboneConfig | Model,
    params: dict[str, Any],
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    dtype: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `params` as an HF checkpoint directory: config.json, model.safetensors, tokenizer.

    model_config: the backbone config (or the Model, whose config is used).
    params: {"backbone": ..., "head": ...} in either layer layout.
    dtype: storage dtype of the written tensors ("float32", "bfloat16", ...); None keeps the
      parameters' own dtype.
    overwrite: replace a non-empty `out_dir` (only once the new directory is complete); without
      it a non-empty `out_dir` is refused with OutputExistsError (ftjax.io.atomic_dir).
    Exports a Llama with its LM head (untied: `lm_head.weight`; tied: none) or a BERT encoder
    (`BertModel` names, no `bert.` prefix). Other heads are an error, not silently dropped.
    """
    config = model_config.config if isinstance(model_config, Model) else model_config
    params = to_layout(params, scan_layers=False)
    _check_exportable(config, params)
    names = LLAMA_NAMES if isinstance(config, LlamaConfig) else BERT_NAMES

    tensors: dict[str, np.ndarray] = {}
    unnamed = []
    for path, value in flatten(params).items():
        found = names.to_checkpoint(path)
        if found is None or found[1].save is None:
            unnamed.append(path)
            continue
        key, rule = found
        array = np.asarray(jax.device_get(value))
        tensors[key] = rule.save(array if dtype is None else array.astype(np.dtype(dtype)))
    if unnamed:
        raise CheckpointError(
            f"save_hf: no Hugging Face name for {len(unnamed)} parameter(s): {', '.join(unnamed)} "
            f"(PEFT leaves must be merged into the base weights before exporting)")

    out = Path(out_dir)
    stored_dtype = np.dtype(next(iter(tensors.values())).dtype).name
    hf_config = config_to_hf(config, dtype=stored_dtype)
    # Whole or not at all: a refused or failed export leaves `out` as it was.
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        write_tensors(tensors, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out


def _check_exportable(config: BackboneConfig, params: dict[str, Any]) -> None:
    head = flatten(params.get("head") or {})
    if isinstance(config, BertConfig):
        if head:
            raise CheckpointError(
                f"save_hf exports the BERT encoder only, but params has a head "
                f"({', '.join('head/' + p for p in head)}) that would be lost; pass "
                f"{{'backbone': params['backbone']}} to export the encoder without it")
        return
    if not isinstance(config, LlamaConfig):
        raise CheckpointError(f"save_hf cannot export a {type(config).__name__}")
    if config.family != "llama":
        raise CheckpointError(f"HF export of a {config.family} model is not built (only Llama "
                              f"names); its weights stay in ftjax checkpoints and adapters")
    if config.tie_word_embeddings:
        if head:
            raise CheckpointError(
                f"save_hf: the config ties the LM head to the embedding, so params must have no "
                f"head, but it has {', '.join('head/' + p for p in head)}; only LM-head Llama "
                f"models are exported for now")
        return
    if set(head) != {"kernel"}:
        found = ", ".join("head/" + p for p in head) or "no head"
        raise CheckpointError(
            f"save_hf exports Llama with its LM head (head/kernel) only for now; params has "
            f"{found}. Other heads (sequence, token, span) have no export format yet")
