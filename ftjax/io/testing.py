"""Tiny checkpoints for tests: a word-level tokenizer and a llama.cpp-layout GGUF writer.

Not imported by ftjax.io; tests import it explicitly. Real checkpoints are large and slow to
read; these let format logic (names, transposes, the q/k permutation, error paths) be tested in
milliseconds on the tiny prime-dimension presets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import models, pre_tokenizers

from ftjax.io.gguf import permute_rotary_rows
from ftjax.io.loading import flatten
from ftjax.io.tokenizer import Tokenizer
from ftjax.models import LlamaConfig, Model, param_shapes
from ftjax.models.config import BackboneConfig
from ftjax.models.layout import to_layout

_LLAMA_SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
_BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}


def tiny_tokenizer(config: BackboneConfig) -> Tokenizer:
    """A whitespace word-level tokenizer whose vocabulary has exactly config.vocab_size entries.

    Llama: <pad>, <s>, </s> take ids 0, 1, 2 (the tiny presets' pad/bos/eos); BERT: [PAD],
    [UNK], [CLS], [SEP], [MASK] take ids 0..4.
    """
    specials = _LLAMA_SPECIALS if isinstance(config, LlamaConfig) else _BERT_SPECIALS
    tokens = [*specials.values()]
    tokens += [f"w{i}" for i in range(len(tokens), config.vocab_size)]
    unk = specials.get("unk_token", "<pad>")
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in specials.values()])
    return Tokenizer(backend, name="tiny", special_tokens=specials)


def random_params(model: Model, seed: int = 0) -> dict[str, Any]:
    """Random parameters for `model` in its own layout, drawn with numpy from `param_shapes`.

    Much faster than `init_params` for tests (no compile of init + forward), and norm scales
    differ from 1 so that a swapped scale/bias or a dropped norm shows in the outputs.
    """
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        noise = 0.1 * rng.standard_normal(spec.shape)
        is_scale = getattr(path[-1], "key", None) == "scale"
        return jnp.asarray((1.0 + noise) if is_scale else noise, spec.dtype)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(model))


# Our paths -> GGUF names (the inverse of ftjax.io.gguf.gguf_llama_names, for writing).
_GGUF_NAMES = {
    "embed_tokens/embedding": "token_embd.weight",
    "norm/scale": "output_norm.weight",
    "self_attn/q_proj/kernel": "attn_q.weight",
    "self_attn/k_proj/kernel": "attn_k.weight",
    "self_attn/v_proj/kernel": "attn_v.weight",
    "self_attn/o_proj/kernel": "attn_output.weight",
    "mlp/gate_proj/kernel": "ffn_gate.weight",
    "mlp/up_proj/kernel": "ffn_up.weight",
    "mlp/down_proj/kernel": "ffn_down.weight",
    "input_layernorm/scale": "attn_norm.weight",
    "post_attention_layernorm/scale": "ffn_norm.weight",
}


def write_llama_gguf(
    path: str | os.PathLike,
    config: LlamaConfig,
    params: dict[str, Any],
    *,
    architecture: str = "llama",
    raw_tensors: Mapping[str, tuple[np.ndarray, Any]] | None = None,
) -> Path:
    """Write `params` as llama.cpp does: F32, (out, in) weights, q/k rows permuted.

    raw_tensors: extra tensors written as given, name -> (bytes array, GGMLQuantizationType),
      to produce files this reader must reject.
    """
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_size)
    writer.add_value_length(config.head_size)
    writer.add_rope_dimension_count(config.head_size)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    _add_tokenizer(writer, config)

    for our_path, value in flatten(to_layout(params, scan_layers=False)).items():
        array = np.asarray(value, np.float32)
        if our_path == "head/kernel":
            writer.add_tensor("output.weight", np.ascontiguousarray(array.T))
            continue
        parts = our_path.removeprefix("backbone/").split("/", 1)
        if parts[0].startswith("layers_"):
            index, rest = parts[0].removeprefix("layers_"), parts[1]
            name = f"blk.{index}.{_GGUF_NAMES[rest]}"
        else:
            rest, name = "/".join(parts), _GGUF_NAMES["/".join(parts)]
        if rest.endswith("kernel"):
            array = array.T  # our (in, out) -> GGUF's (out, in) numpy order
        if rest == "self_attn/q_proj/kernel":
            array = permute_rotary_rows(array, config.num_heads)
        elif rest == "self_attn/k_proj/kernel":
            array = permute_rotary_rows(array, config.num_kv_heads)
        writer.add_tensor(name, np.ascontiguousarray(array))
    for name, (data, raw_dtype) in (raw_tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: Any, config: LlamaConfig) -> None:
    """A byte-level BPE vocabulary of config.vocab_size tokens with one merge ("a b")."""
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<pad>", "<s>", "</s>"]
    count = config.vocab_size - len(specials) - 1
    if count < 66:  # the sorted alphabet reaches "b" at index 65
        raise ValueError(f"vocab_size {config.vocab_size} is too small for the tiny vocabulary")
    tokens = [*specials, *byte_chars[:count], "ab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(["a b"])
    writer.add_pad_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
