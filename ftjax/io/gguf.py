"""GGUF (llama.cpp) files: architecture from metadata, tensors dequantized to fp32.

`general.architecture` "llama" (SmolLM2, Llama) and "gemma3" are read. Facts this module
depends on (see shared/ASSETS.md):
- `gguf.quants.dequantize` returns arrays in numpy order, which for a 2-D weight is (out, in),
  torch's Linear layout; GGUF's own `shape` lists the dimensions the other way round.
- llama.cpp's converter permutes the rows of attn_q / attn_k so that its interleaved-pair rotary
  embedding computes what HF's "rotate_half" does. We use rotate_half, so the permutation is
  undone here; without it the logits are off by whole units while still looking plausible.
  Gemma 3 uses llama.cpp's rotate-half ("NEOX") rotary: its rows are not permuted.
- Gemma's norm weights are stored with its "+1" already added (HF keeps w and computes
  x * (1 + w)): our RMSNorm's x * scale takes them as they are. The local / global layer
  pattern (every 6th layer global) and the local RoPE base (10,000) are not in the metadata:
  they are Gemma 3's constants.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.io.loading import Checkpoint, CheckpointError
from ftjax.io.names import NameMap, Rule, convert, transpose
from ftjax.models import LlamaConfig

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
# Gemma 3's constants that its GGUF metadata does not hold (its HF config's values).
GEMMA3_GLOBAL_EVERY = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0


def unpermute_rotary_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation of an (out, in) weight with `num_heads` heads.

    llama.cpp stores each head's rows as interleaved (even, odd) pairs; HF stores the first
    halves of all pairs, then the second halves.
    """
    rows, cols = w.shape
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} rows do not split into {num_heads} heads of rotary pairs")
    return w.reshape(num_heads, rows // num_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute_rotary_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (HF order -> GGUF order); unpermute_rotary_rows inverts."""
    rows, cols = w.shape
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} rows do not split into {num_heads} heads of rotary pairs")
    return w.reshape(num_heads, 2, rows // num_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_llama_names(config: LlamaConfig) -> NameMap:
    """GGUF tensor names -> our paths for a Llama of this config (read-only: no GGUF export)."""
    def rotary(num_heads: int):
        return lambda w: transpose(unpermute_rotary_rows(w, num_heads))

    layer = "backbone/layers_{i}/"
    linear = {"attn_v": "self_attn/v_proj", "attn_output": "self_attn/o_proj",
              "ffn_gate": "mlp/gate_proj", "ffn_up": "mlp/up_proj", "ffn_down": "mlp/down_proj"}
    return NameMap([
        Rule("token_embd.weight", "backbone/embed_tokens/embedding", save=None),
        Rule("blk.{i}.attn_q.weight", layer + "self_attn/q_proj/kernel",
             load=rotary(config.num_heads), save=None),
        Rule("blk.{i}.attn_k.weight", layer + "self_attn/k_proj/kernel",
             load=rotary(config.num_kv_heads), save=None),
        *(Rule(f"blk.{{i}}.{theirs}.weight", f"{layer}{ours}/kernel", load=transpose, save=None)
          for theirs, ours in linear.items()),
        Rule("blk.{i}.attn_norm.weight", layer + "input_layernorm/scale", save=None),
        Rule("blk.{i}.ffn_norm.weight", layer + "post_attention_layernorm/scale", save=None),
        Rule("output_norm.weight", "backbone/norm/scale", save=None),
        Rule("output.weight", "head/kernel", load=transpose, save=None),
    ])


def gguf_gemma3_names() -> NameMap:
    """GGUF tensor names -> our paths for Gemma 3 (read-only)."""
    layer = "backbone/layers_{i}/"
    linear = {"attn_q": "self_attn/q_proj", "attn_k": "self_attn/k_proj",
              "attn_v": "self_attn/v_proj", "attn_output": "self_attn/o_proj",
              "ffn_gate": "mlp/gate_proj", "ffn_up": "mlp/up_proj", "ffn_down": "mlp/down_proj"}
    norms = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
             "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
             "attn_q_norm": "self_attn/q_norm", "attn_k_norm": "self_attn/k_norm"}
    return NameMap([
        Rule("token_embd.weight", "backbone/embed_tokens/embedding", save=None),
        *(Rule(f"blk.{{i}}.{theirs}.weight", f"{layer}{ours}/kernel", load=transpose, save=None)
          for theirs, ours in linear.items()),
        *(Rule(f"blk.{{i}}.{theirs}.weight", f"{layer}{ours}/scale", save=None)
          for theirs, ours in norms.items()),
        Rule("output_norm.weight", "backbone/norm/scale", save=None),
    ])


def open_gguf(path: str | os.PathLike):
    """A gguf.GGUFReader (parsing the metadata costs seconds: open a file once, share it)."""
    import gguf  # deferred: only GGUF users pay for importing it

    try:
        return gguf.GGUFReader(Path(path))
    except Exception as err:  # gguf raises ValueError / struct.error / OSError on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file ({err})") from err


def read_gguf_checkpoint(path: str | os.PathLike, reader=None) -> Checkpoint:
    """Config and dequantized tensors (under our names) of a llama GGUF file."""
    path = Path(path)
    reader = reader or open_gguf(path)
    tensor_names = {t.name for t in reader.tensors}
    config = llama_config_from_gguf(reader.fields, tensor_names, where=str(path))
    names = gguf_gemma3_names() if config.family == "gemma3" else gguf_llama_names(config)
    conversion = convert(dequantize_all(reader, where=str(path)), names)
    return Checkpoint(config=config, conversion=conversion)


def dequantize_all(reader: Any, *, where: str) -> dict[str, np.ndarray]:
    """Every tensor as float32 numpy, (out, in) for 2-D weights; one error for all failures."""
    from gguf.quants import dequantize

    tensors, problems = {}, []
    for t in reader.tensors:
        type_name = getattr(t.tensor_type, "name", str(t.tensor_type))
        try:
            array = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            problems.append(f"tensor {t.name!r} has quantization type {type_name}, which the "
                            f"gguf package cannot dequantize")
            continue
        numpy_shape = tuple(int(d) for d in reversed(t.shape))
        if array.size != int(np.prod(numpy_shape)):
            problems.append(f"tensor {t.name!r} ({type_name}) dequantized to {array.shape}, "
                            f"expected {numpy_shape} from its GGUF shape {tuple(t.shape)}")
            continue
        tensors[t.name] = array.reshape(numpy_shape)
    if problems:
        raise CheckpointError(f"{where}: cannot read tensors:\n  " + "\n  ".join(problems))
    return tensors


def _f32(value: Any) -> float:
    # GGUF stores floats as f32: 1e-5 reads back as 9.99999974e-06. The shortest decimal that
    # rounds to the same f32 is the value the original config had.
    return float(str(np.float32(value)))


def llama_config_from_gguf(
    fields: dict[str, Any], tensor_names: set[str], *, where: str
) -> LlamaConfig:
    def get(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return default if field is None else field.contents()

    def require(key: str) -> Any:
        if key not in fields:
            raise CheckpointError(f"{where}: GGUF metadata has no {key!r}")
        return fields[key].contents()

    arch = get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(map(repr, SUPPORTED_ARCHITECTURES))
        raise CheckpointError(f"{where}: general.architecture is {arch!r}; only {supported} "
                              f"GGUF files are supported")
    scaling = get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise CheckpointError(f"{where}: {arch}.rope.scaling.type {scaling!r} is not supported "
                              f"(only plain RoPE)")
    if "tokenizer.ggml.tokens" not in fields:
        raise CheckpointError(
            f"{where}: GGUF metadata has no 'tokenizer.ggml.tokens' (the vocabulary)")

    hidden = int(require(f"{arch}.embedding_length"))
    num_heads = int(require(f"{arch}.attention.head_count"))
    head_dim = int(get(f"{arch}.attention.key_length", hidden // num_heads))
    rotary_dims = int(get(f"{arch}.rope.dimension_count", head_dim))
    if rotary_dims != head_dim:
        raise CheckpointError(f"{where}: {arch}.rope.dimension_count={rotary_dims} rotates only "
                              f"part of each {head_dim}-dim head; partial rotary is not supported")

    def token_id(key: str) -> int | None:
        value = get(key)
        return None if value is None else int(value)

    gemma3 = dict(family="gemma3", hidden_act="gelu_pytorch_tanh", qk_norm=True,
                  sandwich_norms=True, scale_embeddings=True,
                  sliding_window=int(get("gemma3.attention.sliding_window", 0)),
                  global_every=GEMMA3_GLOBAL_EVERY, rope_local_theta=GEMMA3_LOCAL_ROPE_THETA)

    return LlamaConfig(
        # The array length, not its decoded strings: decoding 49k tokens is the tokenizer's job.
        vocab_size=len(fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=int(require(f"{arch}.feed_forward_length")),
        num_layers=int(require(f"{arch}.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(get(f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=0 if head_dim == hidden // num_heads else head_dim,
        rope_theta=_f32(get(f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=_f32(require(f"{arch}.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(require(f"{arch}.context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id=token_id("tokenizer.ggml.eos_token_id"),
        pad_token_id=token_id("tokenizer.ggml.padding_token_id"),
        **(gemma3 if arch == "gemma3" else {}),
    )
