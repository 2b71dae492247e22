"""Bottleneck adapters: Houlsby et al. (2019) and Pfeiffer et al. (2020).

    adapter(h) = h + up(act(down(h))),   down: D -> m, up: m -> D, up = 0 at init

An adapter sits on a sublayer's output, after its output projection (and dropout) and before
the residual add:
  houlsby:  after the attention output projection and after the MLP (two per block);
  pfeiffer: after the MLP only (one per block, half the parameters).
Pfeiffer's full configuration also moves the adapter relative to the block's layer norms
(`residual_before_ln` in AdapterHub); here both kinds sit at the same place, before the
residual add of the pre-LN (Llama) or post-LN (BERT) block, so they differ only in where.

Leaves (one module per place, inside the block so `scan_layers` stacks them like every other
block leaf): `backbone/layers_N/adapter_attn/{down,up}/{kernel,bias}` (and `norm/{scale,bias}`
with `norm`) and `backbone/layers_N/adapter_mlp/...`. Logical axes: the D side is "embed" (it shards like the
hidden states it adds to), the bottleneck is "adapter" (new; replicated by any table that does
not name it).

Houlsby et al. also trained the layer norms; that is an option of the trainability spec
(`method_args.train_norms`, ftjax.peft.presets), on by default for houlsby, off for pfeiffer.
Adapters add layers the pretrained architecture lacks, so they cannot be merged into its weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax.numpy as jnp

from ftjax.nn.layers import Dense, LayerNorm, activation
from ftjax.settings import from_config, setting

AdapterKind = Literal["houlsby", "pfeiffer"]
Composition = Literal["fusion", "stack"]
# The regex of the leaves this method adds (matched against canonical per-layer paths).
ADAPTER_LEAVES = r".*/adapter_(?:attn|mlp)/.*"
ADAPTER_AXIS = "adapter"
PLACES = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Adapter settings (the `adapter` config block; the run's method sets `kind`)."""

    kind: AdapterKind = setting("houlsby", "houlsby (after attention and MLP) or pfeiffer (after "
                                "the MLP only); set by the method", config=False)
    size: int | None = setting(None, "the bottleneck width m; None: hidden_size / "
                               "reduction_factor")
    reduction_factor: float = setting(16.0, "D / m when size is None (AdapterHub's default 16)")
    activation: str = setting("relu", "the bottleneck nonlinearity: relu | gelu | gelu_new | silu")
    init_scale: float = setting(1e-2, "std of the down projection's Gaussian init; the up "
                                "projection starts at zero")
    norm: bool = setting(False, "a LayerNorm on the adapter's input (leaves norm/scale, "
                         "norm/bias); with method=hyperformer its scale and bias are generated "
                         "per task: the task-conditional layer norm")
    compose: tuple[str, ...] = setting(
        (), "several named adapters at each place instead of one (leaves adapter_<place>/"
        "<name>/...), combined by `composition`; set by methods fusion and stack",
        config=False)
    composition: Composition = setting(
        "fusion", "how composed adapters combine: fusion (AdapterFusion: attention over their "
        "outputs, leaves adapter_<place>/fusion/...) or stack (one after another, in order)",
        config=False)
    fusion_temperature: float = setting(1.0, "fusion: softmax temperature of the attention "
                                        "over the adapters")

    def __post_init__(self):
        object.__setattr__(self, "compose", tuple(self.compose))  # JSON gives lists
        if len(set(self.compose)) != len(self.compose) or "fusion" in self.compose:
            raise ValueError(f"composed adapter names must be distinct and not 'fusion': "
                             f"{list(self.compose)}")
        if self.composition not in ("fusion", "stack"):
            raise ValueError(f"unknown composition {self.composition!r}; expected fusion or "
                             f"stack")
        if not self.fusion_temperature > 0:
            raise ValueError(f"fusion_temperature must be > 0, got {self.fusion_temperature}")
        if self.kind not in PLACES:
            raise ValueError(f"unknown adapter kind {self.kind!r}; expected one of {tuple(PLACES)}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"adapter size must be >= 1 (or None to use reduction_factor), "
                             f"got {self.size}")
        if self.reduction_factor <= 0:
            raise ValueError(f"adapter reduction_factor must be > 0, got {self.reduction_factor}")
        if self.init_scale < 0:
            raise ValueError(f"adapter init_scale must be >= 0, got {self.init_scale}")

        try:
            activation(self.activation)
        except ValueError:
            raise ValueError(f"unknown adapter activation {self.activation!r}; expected one of "
                             f"relu, gelu, gelu_new, silu") from None

    def bottleneck(self, hidden_size: int) -> int:
        return self.size or max(1, int(hidden_size / self.reduction_factor))

    def at(self, place: str) -> bool:
        """Whether this kind puts an adapter at `place` ("attn" or "mlp")."""
        return place in PLACES[self.kind]

    @classmethod
    def from_config(cls, cfg: Any) -> "AdapterConfig":
        """From a ConfigDict / mapping / AdapterConfig / None; unknown keys are an error."""

        return from_config(cls, cfg, "adapter")


class Adapter(nn.Module):
    """h + up(act(down(h))) on (..., D) hidden states; with config.norm,
    h + up(act(down(LayerNorm(h))))."""

    config: AdapterConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, residual: bool = True):
        """h + the adapter's output; with residual=False, its output alone."""
        cfg = self.config
        D = h.shape[-1]
        dense = lambda features, axes, init, name: Dense(  # noqa: E731
            features, axes, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=init, name=name,
        )
        # Up starts at exactly zero (kernel and bias): the adapter adds nothing, so the adapted
        # model computes the pretrained function at step 0 and fine-tuning starts from it. Down
        # is a small Gaussian, not zero: up's first gradient is act(down(h))^T g, which must
        # not vanish (with both zero, relu(0) = 0 would leave every adapter gradient at zero).
        x = LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(h) \
            if cfg.norm else h
        z = dense(cfg.bottleneck(D), ("embed", ADAPTER_AXIS),
                  nn.initializers.normal(cfg.init_scale), "down")(x)
        z = activation(cfg.activation)(z)
        out = dense(D, (ADAPTER_AXIS, "embed"), nn.initializers.zeros_init(), "up")(z)
        return h + out if residual else out


class ComposedAdapters(nn.Module):
    """Named adapters at one place (config.compose), combined.

    stack: h through each adapter in turn (MAD-X's language-then-task adapters).
    fusion (AdapterFusion, Pfeiffer et al. 2021): each adapter's output o_n attends from the
    input, h + sum_n softmax_n(q . k_n / T) v_n with q = h Wq, k_n = o_n Wk, v_n = o_n Wv;
    Wv starts as the identity, so fusion starts as a weighting of the adapters' outputs.
    """

    config: AdapterConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        single = dataclasses.replace(cfg, compose=())
        adapters = [Adapter(single, self.dtype, self.param_dtype, name=name)
                    for name in cfg.compose]
        if cfg.composition == "stack":
            for adapter in adapters:
                h = adapter(h)
            return h
        outs = jnp.stack([adapter(h, residual=False) for adapter in adapters], axis=-2)
        fusion = _Fusion(cfg.fusion_temperature, self.dtype, self.param_dtype, name="fusion")
        return h + fusion(h, outs)


class _Fusion(nn.Module):
    """AdapterFusion's attention over the adapters' outputs (..., N, D) from the input h."""

    temperature: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, outs):
        D = h.shape[-1]
        dense = lambda init, name: Dense(  # noqa: E731
            D, ("embed", "embed_out"), use_bias=True, dtype=self.dtype,
            param_dtype=self.param_dtype, kernel_init=init, name=name)
        small = nn.initializers.normal(0.02)
        q = dense(small, "query")(h)[..., None, :]
        k = dense(small, "key")(outs)
        v = dense(_identity, "value")(outs)
        scores = jnp.sum(q * k, axis=-1) / self.temperature  # (..., N)
        weights = nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        return jnp.sum(weights[..., None] * v, axis=-2)


def _identity(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(*shape, dtype=dtype)


def maybe_adapt(config: AdapterConfig | None, place: str, h, *, dtype, param_dtype):
    """`h` through the block's adapter at `place` when the config puts one there, else `h`.

    Called inside a block's compact __call__: the adapter module is named `adapter_<place>`.
    """
    if config is None or not config.at(place):
        return h
    cls = ComposedAdapters if config.compose else Adapter
    return cls(config, dtype=dtype, param_dtype=param_dtype, name=f"adapter_{place}")(h)
