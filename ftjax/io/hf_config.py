"""Hugging Face config.json <-> our architecture configs (LlamaConfig, BertConfig).

Only architecture fields cross this boundary; policy fields (compute/param dtype, scan, remat)
belong to the caller. Every config.json option that would change the function the model computes
and that our modules do not implement (rope scaling, biases in Llama projections, relative
position embeddings, ...) is an error here, not a silently different model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftjax.io.loading import CheckpointError
from ftjax.models import BertConfig, LlamaConfig
from ftjax.models.config import BackboneConfig

SUPPORTED_MODEL_TYPES = ("llama", "bert")


def read_config_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot be read as JSON ({err})") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def config_from_hf(hf: dict[str, Any], *, where: str) -> BackboneConfig:
    """Our backbone config for an HF config.json dict (policy fields left at their defaults)."""
    model_type = hf.get("model_type")
    if model_type == "llama":
        return _llama_from_hf(hf, where)
    if model_type == "bert":
        return _bert_from_hf(hf, where)
    raise CheckpointError(f"{where}: model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")


def _require(hf: dict[str, Any], key: str, where: str) -> Any:
    if hf.get(key) is None:
        raise CheckpointError(f"{where}: config.json has no {key!r}")
    return hf[key]


def _single_id(value: Any) -> int | None:
    # Some configs list several EOS ids (Llama 3); the first is the one generation starts with.
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    """rope_theta from transformers <5 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for rope_type in (params.get("rope_type"), scaling.get("rope_type"), scaling.get("type")):
        if rope_type not in (None, "default"):
            raise CheckpointError(f"{where}: rope type {rope_type!r} (rope scaling) is not "
                                  f"supported; only plain RoPE ('default') is")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    return 10000.0 if theta is None else float(theta)  # transformers' LlamaConfig default


def _llama_from_hf(hf: dict[str, Any], where: str) -> LlamaConfig:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(
            f"{where}: hidden_act {act!r} is not supported for llama (only 'silu')")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise CheckpointError(
                f"{where}: {flag}=true is not supported (our Llama has no biases)")
    num_heads = int(_require(hf, "num_attention_heads", where))
    hidden = int(_require(hf, "hidden_size", where))
    head_dim = hf.get("head_dim")
    return LlamaConfig(
        vocab_size=int(_require(hf, "vocab_size", where)),
        hidden_size=hidden,
        intermediate_size=int(_require(hf, "intermediate_size", where)),
        num_layers=int(_require(hf, "num_hidden_layers", where)),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        # 0 means hidden // heads in our config; store it only when it differs.
        head_dim=0 if head_dim in (None, hidden // num_heads) else int(head_dim),
        rope_theta=_rope_theta(hf, where),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=_single_id(hf.get("bos_token_id")),
        eos_token_id=_single_id(hf.get("eos_token_id")),
        pad_token_id=_single_id(hf.get("pad_token_id")),
    )


def _bert_from_hf(hf: dict[str, Any], where: str) -> BertConfig:
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(f"{where}: position_embedding_type {position_type!r} is not "
                              f"supported (only 'absolute')")
    act = hf.get("hidden_act", "gelu")
    try:
        return BertConfig(
            vocab_size=int(_require(hf, "vocab_size", where)),
            hidden_size=int(_require(hf, "hidden_size", where)),
            intermediate_size=int(_require(hf, "intermediate_size", where)),
            num_layers=int(_require(hf, "num_hidden_layers", where)),
            num_heads=int(_require(hf, "num_attention_heads", where)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
            type_vocab_size=int(hf.get("type_vocab_size", 2)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            hidden_act=act,
            hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            pad_token_id=int(hf.get("pad_token_id") or 0),
        )
    except ValueError as err:  # BertConfig's own checks (unsupported activation, head split)
        raise CheckpointError(f"{where}: {err}") from err


def config_to_hf(config: BackboneConfig, *, dtype: str) -> dict[str, Any]:
    """config.json contents that transformers (4.4x and 5.x) reads back as the same model."""
    if isinstance(config, LlamaConfig):
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads,
            "head_dim": config.head_size,
            "hidden_act": "silu",
            "max_position_embeddings": config.max_position_embeddings,
            "rms_norm_eps": config.rms_norm_eps,
            # transformers < 5 reads rope_theta; 5.x reads rope_parameters (and accepts both).
            "rope_theta": config.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": config.tie_word_embeddings,
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
            "use_cache": True,
            "torch_dtype": dtype,  # transformers < 5
            "dtype": dtype,  # transformers 5
        }
    if isinstance(config, BertConfig):
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "max_position_embeddings": config.max_position_embeddings,
            "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": config.layer_norm_eps,
            "hidden_act": config.hidden_act,
            "hidden_dropout_prob": config.hidden_dropout,
            "attention_probs_dropout_prob": config.attention_dropout,
            "position_embedding_type": "absolute",
            "pad_token_id": config.pad_token_id,
            "torch_dtype": dtype,
            "dtype": dtype,
        }
    raise TypeError(f"cannot export a {type(config).__name__} to config.json")
