"""Layers shared by every architecture.

Every parameter is created with a logical axis name (`nn.with_logical_partitioning`); the sharding
rules table (ftjax/parallel) maps them to mesh axes. Logical names used:
  vocab, embed, mlp, heads (flattened query heads x head_dim), kv_heads (flattened kv heads x
  head_dim), norm, positions, types, labels, layers (the stacked axis under scan), lora_rank
  (the inner axis of LoRA's A @ B; ftjax.nn.lora), adapter (a bottleneck adapter's inner
  width; ftjax.nn.adapters), prefix (virtual tokens of prefix and prompt tuning;
  ftjax.nn.prefix / prompt), prefix_hidden (the prefix reparameterization MLP's hidden layer).
Parameter trees handed to users are unboxed (plain arrays); see `ftjax.models.model`.

Shapes in names: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head size.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.nn.ia3 import IA3Config, ia3_scale
from ftjax.nn.lora import LoraConfig, lora_branch

Initializer = Callable[..., jax.Array]

default_kernel_init = nn.initializers.normal(stddev=0.02)


class Dense(nn.Module):
    """y = x @ kernel (+ bias). Kernels are stored (in, out), the transpose of torch's Linear.

    lora: when set and this module's path matches `lora.targets`, the module also owns
      `lora_a` / `lora_b` and adds their low-rank update (ftjax.nn.lora). `deterministic`
      only matters then (LoRA dropout).
    ia3: when set and this module's path matches `ia3.targets`, the module also owns
      `ia3_scale` and rescales its input (feedforward modules) or its output (ftjax.nn.ia3).
    methods: further PEFT methods (ftjax.nn.dense_methods.DenseMethod); each that targets this
      module's path changes its output, in order, before (IA)^3's output scaling.
    """

    features: int
    axes: tuple[str, str]
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    lora: LoraConfig | None = None
    ia3: IA3Config | None = None
    methods: tuple = ()

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        path = "/".join(self.path)
        ia3 = self.ia3 is not None and self.ia3.targets_module(path)
        ia3_input = ia3 and self.ia3.is_feedforward(path)
        if ia3_input:
            x = x.astype(self.dtype) * ia3_scale(self, x.shape[-1], self.axes[0])
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.lora is not None and self.lora.targets_module(path):
            y = y + lora_branch(self, x, self.features, self.axes, self.lora, deterministic)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[1],)),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        for method in self.methods:
            if method.targets_module(path):
                y = method(self, x, y, deterministic)
        if ia3 and not ia3_input:
            y = y * ia3_scale(self, self.features, self.axes[1])
        return y


class Embed(nn.Module):
    """Token (or position / type) embedding table with a tied-output `attend`."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(default_kernel_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids):
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x):
        """Logits against the table: the tied LM head."""
        return jnp.dot(x.astype(self.dtype), self.embedding.astype(self.dtype).T)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x.shape[-1],), self.param_dtype,
        )
        # Statistics in fp32 whatever the compute dtype: bf16 variance loses the small weights.
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
    eps: float = 1e-12
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (features,), self.param_dtype,
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
            (features,), self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def rope_cos_sin(positions_BT, head_size: int, theta: float):
    """cos/sin tables (B, T, H) for HF-style "rotate_half" rotary embeddings, in fp32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_size, 2, dtype=jnp.float32) / head_size))
    freqs = positions_BT.astype(jnp.float32)[..., None] * inv_freq  # (B, T, H/2)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BTNH, cos_BTH, sin_BTH):
    half = x_BTNH.shape[-1] // 2
    x1, x2 = x_BTNH[..., :half], x_BTNH[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    x32 = x_BTNH.astype(jnp.float32)
    out = x32 * cos_BTH[:, :, None, :] + rotated.astype(jnp.float32) * sin_BTH[:, :, None, :]
    return out.astype(x_BTNH.dtype)


def attention_mask(
    *,
    q_valid_BT=None,
    k_valid_BS=None,
    causal_offset=None,
    q_segments_BT=None,
    k_segments_BS=None,
    always_visible: int = 0,
    q_len: int,
    k_len: int,
    window: int = 0,
):
    """Boolean mask (B, 1, T, S): True where query t may attend to key s.

    causal_offset: None for bidirectional attention; otherwise the key index of query 0 (an int
    or a (B,) array), so query t sees keys s <= offset + t. That covers plain causal attention
    (offset 0) and decoding against a KV cache (offset = number of cached slots).
    window (with causal_offset): query t sees only the keys s > offset + t - window (a local
    layer's sliding window, counted in slots). Segment ids keep packed documents apart; the first `always_visible` keys (a soft prompt's
    virtual tokens, ftjax.nn.prompt) belong to every segment. Query rows with no visible key
    are not produced by the masks we build (a padding query still sees itself or its segment's
    padding slot) except for fully padded rows; those give finite garbage that the loss masks
    out.
    """
    mask = jnp.ones((1, 1, q_len, k_len), dtype=bool)
    if causal_offset is not None:
        q_idx = jnp.arange(q_len)[None, :] + jnp.reshape(jnp.asarray(causal_offset), (-1, 1))
        k_idx = jnp.arange(k_len)
        mask = mask & (k_idx[None, None, :] <= q_idx[:, :, None])[:, None]
        if window:
            mask = mask & (k_idx[None, None, :] > q_idx[:, :, None] - window)[:, None]
    if k_valid_BS is not None:
        mask = mask & k_valid_BS.astype(bool)[:, None, None, :]
    if q_segments_BT is not None and k_segments_BS is not None:
        same = q_segments_BT[:, None, :, None] == k_segments_BS[:, None, None, :]
        if always_visible:
            same = same | (jnp.arange(k_len) < always_visible)[None, None, None, :]
        mask = mask & same
    del q_valid_BT  # query padding is handled by the loss mask, not by attention
    return mask


# What cuDNN's fused attention takes (jax's own check, jax/_src/cudnn): bf16 / fp16 inputs and a
# head size that is a multiple of 8, up to 128 (256 on Hopper; 128 keeps one rule everywhere).
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD = 128


def attention_implementation(requested: str | None, dtype, head_size: int, q_len: int,
                             kv_len: int, backend: str | None = None) -> str:
    """Which jax.nn.dot_product_attention implementation a layer uses.

    requested: the config's `attention_impl`. "xla" / "cudnn" are taken as given (cuDNN then
    fails loudly where it cannot run). None picks: cuDNN's fused kernel on a GPU when the inputs
    are bf16 / fp16, the head size fits and queries and keys are the same sequence (training,
    evaluation, prefill; a decode step's single query and a prefix's extra keys stay on XLA),
    XLA otherwise. The choice is ours because jax's own None means XLA (jax 0.10 to 0.12:
    "currently falls back to xla"), so leaving it to jax would never run the fused kernel.
    """
    if requested is not None:
        return requested
    backend = backend or jax.default_backend()
    fits = (jnp.dtype(dtype) in tuple(map(jnp.dtype, _CUDNN_DTYPES))
            and head_size % 8 == 0 and head_size <= _CUDNN_MAX_HEAD and q_len == kv_len)
    return "cudnn" if backend == "gpu" and fits else "xla"


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_B1TS, *, implementation=None,
                          dropout_rate: float = 0.0, dropout_rng=None, causal: bool = False):
    """Grouped-query attention (K divides N).

    Without dropout: jax.nn.dot_product_attention with the implementation
    `attention_implementation` picks. When cuDNN was picked rather than asked for and jax
    declines this call while tracing it (a sequence length its kernel does not take with a mask,
    an older cuDNN), the call runs on XLA instead. With dropout (training only; the fused kernels
    have none): an explicit fp32 softmax whose probabilities are dropped, the same function
    otherwise.

    causal: the caller's promise that `mask_B1TS` already hides every key after its query, with
    queries and keys at the same positions (a decoder attending over its own tokens). The mask
    alone gives the right answer; cuDNN's kernel, told as well, skips the blocks above the
    diagonal instead of computing and masking them (about half the attention work). XLA is not
    told: its result is the mask's, unchanged.
    """
    if not dropout_rate or dropout_rng is None:
        chosen = attention_implementation(implementation, q_BTNH.dtype, q_BTNH.shape[-1],
                                          q_BTNH.shape[1], k_BSKH.shape[1])
        attend = functools.partial(jax.nn.dot_product_attention, q_BTNH, k_BSKH, v_BSKH,
                                   mask=mask_B1TS)
        cudnn = functools.partial(attend, implementation="cudnn", is_causal=causal)
        if chosen == "cudnn" and implementation is None:
            try:
                return cudnn()
            except (NotImplementedError, RuntimeError, ValueError):
                return attend(implementation="xla")
        return cudnn() if chosen == "cudnn" else attend(implementation=chosen)
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    probs = _grouped_probs(q_BTNH, k_BSKH, mask_B1TS)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(v_BSKH.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v_BSKH).reshape(B, T, N, H)


def _grouped_probs(q_BTNH, k_BSKH, mask_B1TS):
    """fp32 attention probabilities (B, K, N // K, T, S): query head n uses kv head n // (N // K)."""
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q = q_BTNH.reshape(B, T, K, N // K, H)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k_BSKH).astype(jnp.float32) * H**-0.5
    logits = jnp.where(mask_B1TS[:, :, None], logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def attention_probs(q_BTNH, k_BSKH, mask_B1TS):
    """The attention distribution of every query head (B, N, T, S), fp32: what a fused kernel
    computes and never shows, for a caller that reads it (attention distillation)."""
    B, T, N, _ = q_BTNH.shape
    return _grouped_probs(q_BTNH, k_BSKH, mask_B1TS).reshape(B, N, T, -1)


def activation(name: str):
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name == "silu":
        return jax.nn.silu
    raise ValueError(f"unknown activation {name!r}")
